#!/usr/bin/env bash
# Creates the CPU PyTorch + diffusers virtual environment the fixture oracle runs in, using the shared
# setup script (torch 2.15.0 CPU-only via CUDA stubs, diffusers 0.42.1; about a minute).
#   tools/oracle/setup_venv.sh [VENV_DIR]     (default: .venv, relative to the repository root)
# then: .venv/bin/python tools/oracle/make_fixtures.py
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
exec bash ../shared/tools/torch-cpu/setup.sh "${1:-.venv}"
