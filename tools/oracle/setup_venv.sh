#!/usr/bin/env bash
# Creates the CPU PyTorch + diffusers + peft virtual environment the oracles run in, from PyPI alone
# (about 600 MB of downloads, 1.5 GB on disk, a minute or two):
#   tools/oracle/setup_venv.sh [VENV_DIR]     (default: .venv, relative to the repository root)
# then e.g.: .venv/bin/python tools/oracle/make_fixtures.py
# PyPI's x86_64 torch wheel is a CUDA build; instead of its nvidia-* dependencies (about 2.5 GB),
# tools/oracle/cuda_stubs.py builds no-op stand-ins for the CUDA libraries (needs gcc and readelf),
# so `import torch` works with CPU ops only. Never use this environment on a GPU machine.
# Pinned versions (override with TORCH=, DIFFUSERS=, PEFT=): the fixtures were made with these.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
VENV=${1:-.venv}
TORCH=${TORCH:-torch==2.15.0}
DIFFUSERS=${DIFFUSERS:-diffusers==0.42.1}
PEFT=${PEFT:-peft==0.21.2}
python3 -m venv "$VENV"
PY="$VENV/bin/python"
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
"$PY" -m pip download -q --no-deps --progress-bar off "$TORCH" -d "$dl"
"$PY" -m pip install -q --no-deps "$dl"/torch-*.whl
# torch's pure-Python requirements, and diffusers (which does not depend on torch).
"$PY" -m pip install -q filelock typing-extensions sympy networkx jinja2 fsspec numpy safetensors "$DIFFUSERS"
# diffusers' LoRA loader needs peft; peft and accelerate require torch, which pip would resolve to
# the CUDA wheels: install those two without dependencies, then what they need besides torch.
"$PY" -m pip install -q --no-deps "$PEFT" accelerate
"$PY" -m pip install -q packaging psutil pyyaml tqdm huggingface_hub transformers
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PY" tools/oracle/cuda_stubs.py "$SITE"
"$PY" -c "import torch, diffusers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'peft', peft.__version__)"
