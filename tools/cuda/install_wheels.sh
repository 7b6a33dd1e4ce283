#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler tools that the kernel compile check (tests/cuda_kernels.rs)
# needs into DIR, from NVIDIA's PyPI wheels, and prints the environment lines for it:
#
#   eval "$(tools/cuda/install_wheels.sh DIR)"
#   PRFL_KERNELS_REQUIRE=1 cargo test --test cuda_kernels
#
# Versions are pinned to 13.0.x on purpose: a newer NVRTC emits PTX that the 13.0 driver of the
# GPU machines rejects. No GPU and no CUDA installation are needed. Re-running with the tools in
# place installs nothing. Progress goes to stderr; stdout carries only the export lines.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
PY="${PYTHON:-python3}"
LIB="$DIR/nvidia/cu13/lib"
PTXAS="$DIR/nvidia/cu13/bin/ptxas"

if [ ! -e "$LIB/libnvrtc.so.13" ] || [ ! -e "$LIB/libnvrtc-builtins.so.13.0" ] || [ ! -x "$PTXAS" ]; then
    if ! "$PY" -m pip --version >/dev/null 2>&1; then
        echo "error: '$PY -m pip' is not available (install pip, e.g. the python3-pip package)" >&2
        exit 1
    fi
    echo "== installing the CUDA 13.0 NVRTC and ptxas wheels into $DIR" >&2
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
        --target "$DIR" \
        nvidia-cuda-nvrtc==13.0.88 \
        nvidia-cuda-runtime==13.0.96 \
        nvidia-cuda-nvcc==13.0.88 >&2
fi
for f in "$LIB/libnvrtc.so.13" "$LIB/libnvrtc-builtins.so.13.0" "$PTXAS"; do
    if [ ! -e "$f" ]; then
        echo "error: $f missing after installing the wheels" >&2
        exit 1
    fi
done
echo "export PRFL_NVRTC_LIB_DIR='$LIB'"
echo "export PRFL_PTXAS='$PTXAS'"
