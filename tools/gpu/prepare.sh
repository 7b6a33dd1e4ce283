#!/usr/bin/env bash
# Builds, on the development machine, what tools/gpu/run_all.sh runs on a lent GPU machine, which
# has no Rust toolchain and no network: the release `prfl` binary and the GPU test binaries
# (tests/cuda_backend.rs, tests/cuda_kernels.rs), stripped, into .gpu-bin/ (ignored by git through
# .git/info/exclude). Then, from the device tool, in one call:
#
#   run(command="bash tools/gpu/run_all.sh", carry=[".gpu-bin"])
#
# Both machines are x86-64; binaries built against an older glibc (here Debian 12's 2.36) run on
# the GPU image's newer one. CUDA is loaded at run time (cudarc's dynamic loading), so nothing
# here needs CUDA.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(pwd)"
OUTDIR="$ROOT/.gpu-bin"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

if [ "$(uname -m)" != "x86_64" ]; then
    echo "error: the GPU machines are x86-64; build there or on an x86-64 machine" >&2
    exit 1
fi
if [ -d .git ] && ! grep -qx '/.gpu-bin/' .git/info/exclude 2>/dev/null; then
    echo '/.gpu-bin/' >> .git/info/exclude
fi

echo "== cargo build --release --bin prfl (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
cargo build --release --bin prfl >&2
echo "== cargo test --release --no-run --test cuda_backend --test cuda_kernels" >&2
cargo test --release --no-run --test cuda_backend --test cuda_kernels --message-format=json \
    2>/dev/null >"$CARGO_TARGET_DIR/gpu-tests.json" || {
    # Show the compiler's messages on failure.
    cargo test --release --no-run --test cuda_backend --test cuda_kernels >&2
    exit 1
}

rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
python3 - "$CARGO_TARGET_DIR/gpu-tests.json" "$OUTDIR" <<'PY'
import json, shutil, sys
src, out = sys.argv[1], sys.argv[2]
found = {}
for line in open(src):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        found[m["target"]["name"]] = m["executable"]
for name in ("cuda_backend", "cuda_kernels"):
    if name not in found:
        sys.exit(f"error: no test executable for {name} in cargo's output")
    shutil.copy2(found[name], f"{out}/{name}")
PY
cp "$CARGO_TARGET_DIR/release/prfl" "$OUTDIR/prfl"
for f in "$OUTDIR"/*; do
    strip --strip-debug "$f" 2>/dev/null || true
done
git rev-parse HEAD > "$OUTDIR/COMMIT" 2>/dev/null || echo unknown > "$OUTDIR/COMMIT"
{ git status --short 2>/dev/null | head -50; } > "$OUTDIR/STATUS" || true
date -u +%Y-%m-%dT%H:%M:%SZ > "$OUTDIR/BUILT"
du -sh "$OUTDIR"/* >&2
echo "ready: carry .gpu-bin with the device call (run: bash tools/gpu/run_all.sh)" >&2
