#!/usr/bin/env bash
# The whole GPU suite and the benchmarks, in one call on a lent GPU machine (issue 7, items 4-5).
#
# On the development machine first (the GPU machine has no Rust toolchain and no network):
#   tools/gpu/prepare.sh                     # release prfl + GPU test binaries -> .gpu-bin/
# then, through the device tool, in one call:
#   run(command="bash tools/gpu/run_all.sh", carry=[".gpu-bin"])
# (Where cargo and the crates are available on the GPU machine, it builds there instead.)
#
# What it does, within a deadline (RUN_ALL_DEADLINE_S, default 560 s: the device tool allows
# 600 s a command); every phase has its own time cap and is skipped when too little time is left:
#   1. nvidia-smi, the Python with torch, the CUDA libraries (libnvrtc, libcublas, libcublasLt may
#      be only in torch's nvidia/* pip packages: gathered into one folder passed to prfl as
#      PRFL_CUDA_LIB_DIR / --cuda-lib-dir), ptxas;
#   2. the kernel compile check (tests/cuda_kernels.rs, PRFL_KERNELS_REQUIRE=1) and the GPU tests
#      against the CPU backend (tests/cuda_backend.rs, PRFL_CUDA_REQUIRE=1);
#   3. the measured bf16 GEMM peak and copy bandwidth (torch);
#   4. `prfl bench --preset 240p|480p` and `tools/bench/torch_gpu.py --preset 240p|480p` one after
#      the other (never concurrently), then the comparison table (tools/gpu/compare.py).
# Results go to $OUT (at most 8 files come back): summary.txt (the table, printed last too),
# results.json, tests.log, bench.log, env.txt, cuda-kernel-report.txt.
#
# Knobs: RUN_ALL_PRESETS (default "240p 480p"), RUN_ALL_SKIP_TESTS=1, RUN_ALL_SKIP_BENCH=1,
# RUN_ALL_LORA=1 (PRFL with LoRA instead of full fine-tuning), PYTHON, PRFL_CUDA_LIB_DIR.
set -uo pipefail

START=$(date +%s)
DEADLINE=${RUN_ALL_DEADLINE_S:-560}
cd "$(dirname "$0")/../.."
ROOT="$(pwd)"
OUT="${OUT:-$ROOT/gpu-out}"
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/prfl-gpu.XXXXXX)"
ENVLOG="$OUT/env.txt"
TESTLOG="$OUT/tests.log"
BENCHLOG="$OUT/bench.log"
SUMMARY="$OUT/summary.txt"
: >"$ENVLOG"
: >"$TESTLOG"
: >"$BENCHLOG"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((DEADLINE - $(elapsed))); }
log() { echo "[$(elapsed)s] $*" | tee -a "$ENVLOG" >&2; }
note() { echo "$*" >>"$SUMMARY"; }
# cap SECONDS: the time a phase may take, bounded by what is left (minus a reserve for the end).
cap() {
    local want=$1 l
    l=$(($(left) - 15))
    if [ "$l" -lt "$want" ]; then echo "$l"; else echo "$want"; fi
}

# ------------------------------------------------------------------------------------ 1. environment
{
    echo "== date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "== host: $(uname -a)"
    echo "== nvidia-smi"
    nvidia-smi 2>&1 || echo "(nvidia-smi failed)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv 2>&1 || true
} >>"$ENVLOG"
cat "$ENVLOG"

PY=""
for p in "${PYTHON:-}" python3 /opt/torch/.venv/bin/python3 python; do
    [ -n "$p" ] || continue
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch' >/dev/null 2>&1; then
        PY="$(command -v "$p")"
        break
    fi
done
if [ -n "$PY" ]; then
    log "python with torch: $PY ($("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1))"
else
    log "no python with torch found: the PyTorch side and the peak measurement are skipped"
fi

# The CUDA libraries, gathered into one folder (symlinks) for PRFL_CUDA_LIB_DIR.
LIBDIR="$WORK/cudalib"
mkdir -p "$LIBDIR"
SEARCH=()
if [ -n "${PRFL_CUDA_LIB_DIR:-}" ]; then SEARCH+=("$PRFL_CUDA_LIB_DIR"); fi
if [ -n "$PY" ]; then
    while IFS= read -r d; do
        [ -n "$d" ] && SEARCH+=("$d")
    done < <("$PY" - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
for r in roots:
    for d in sorted(glob.glob(os.path.join(r, "*", "lib")) + glob.glob(os.path.join(r, "*", "*", "lib"))):
        print(d)
PY
)
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
    /usr/local/cuda-13*/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu /usr/local/nvidia/lib64; do
    [ -d "$d" ] && SEARCH+=("$d")
done
for stem in nvrtc nvrtc-builtins cublas cublasLt; do
    found=""
    for d in "${SEARCH[@]}"; do
        # The SONAME-like name first (libcublas.so.13), then any 13.x file.
        for f in "$d/lib$stem.so.13" "$d"/lib"$stem".so.13.*; do
            if [ -e "$f" ]; then found="$f"; break 2; fi
        done
    done
    if [ -n "$found" ]; then
        ln -sf "$found" "$LIBDIR/$(basename "$found")"
        [ "$(basename "$found")" = "lib$stem.so.13" ] || ln -sf "$found" "$LIBDIR/lib$stem.so.13"
        # cudarc asks for the bare lib$stem.so first: with this link first on LD_LIBRARY_PATH,
        # that lookup finds the folder's file (glibc then matches the preloaded object), not a
        # toolkit's development symlink of another release (prfl refuses that mix: probe.rs).
        ln -sf "$found" "$LIBDIR/lib$stem.so"
        log "lib$stem: $found"
    else
        log "lib$stem: NOT FOUND (searched ${SEARCH[*]})"
    fi
done
export PRFL_CUDA_LIB_DIR="$LIBDIR"
export PRFL_NVRTC_LIB_DIR="$LIBDIR"
export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -d /usr/local/nvidia/lib64 ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/usr/local/nvidia/lib64"
PTXAS=""
for p in "$(command -v ptxas 2>/dev/null)" /usr/local/cuda/bin/ptxas /usr/local/cuda-13*/bin/ptxas; do
    if [ -n "$p" ] && [ -x "$p" ]; then PTXAS="$p"; break; fi
done
if [ -z "$PTXAS" ] && [ -n "$PY" ]; then
    PTXAS="$("$PY" -c 'import glob, nvidia; print(next(iter(g for r in nvidia.__path__ for g in glob.glob(r + "/*/bin/ptxas")), ""))' 2>/dev/null)"
fi
export PRFL_PTXAS="$PTXAS"
log "ptxas: ${PTXAS:-NOT FOUND} ($("${PTXAS:-false}" --version 2>/dev/null | tail -1))"

# The binaries: carried from the development machine (.gpu-bin), else built here.
BIN=""
if [ -x .gpu-bin/prfl ] && [ -x .gpu-bin/cuda_backend ]; then
    BIN="$ROOT/.gpu-bin"
    log "binaries: carried .gpu-bin (commit $(cat .gpu-bin/COMMIT 2>/dev/null), built $(cat .gpu-bin/BUILT 2>/dev/null))"
elif command -v cargo >/dev/null 2>&1; then
    log "binaries: building with cargo (release)"
    export CARGO_TARGET_DIR="$WORK/target"
    if timeout "$(cap 300)" cargo build --release --bin prfl >>"$ENVLOG" 2>&1 &&
        timeout "$(cap 300)" cargo test --release --no-run --test cuda_backend --test cuda_kernels \
            --message-format=json 2>>"$ENVLOG" >"$WORK/tests.json"; then
        BIN="$WORK/bin"
        mkdir -p "$BIN"
        cp "$CARGO_TARGET_DIR/release/prfl" "$BIN/"
        "${PY:-python3}" - "$WORK/tests.json" "$BIN" <<'PY'
import json, shutil, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy2(m["executable"], f"{sys.argv[2]}/{m['target']['name']}")
PY
    else
        log "cargo build FAILED (see env.txt)"
    fi
else
    log "no .gpu-bin and no cargo: run tools/gpu/prepare.sh on the development machine and carry .gpu-bin"
fi
if [ -n "$BIN" ]; then
    "$BIN/prfl" devices --cuda-lib-dir "$LIBDIR" >>"$ENVLOG" 2>&1 || "$BIN/prfl" --version >>"$ENVLOG" 2>&1
fi

# ------------------------------------------------------------------------------------ 2. tests
TESTS_STATUS="not run"
KERNELS_STATUS="not run"
if [ -n "$BIN" ] && [ "${RUN_ALL_SKIP_TESTS:-0}" != "1" ]; then
    if [ -x "$BIN/cuda_kernels" ]; then
        log "tests/cuda_kernels.rs (compile check, PRFL_KERNELS_REQUIRE=1)"
        echo "==== tests/cuda_kernels.rs" >>"$TESTLOG"
        PRFL_KERNELS_REQUIRE=1 CARGO_TARGET_DIR="$WORK" timeout "$(cap 120)" \
            "$BIN/cuda_kernels" --nocapture --test-threads 1 >>"$TESTLOG" 2>&1
        rc=$?
        KERNELS_STATUS=$([ $rc -eq 0 ] && echo passed || echo "FAILED (exit $rc)")
        [ -f "$WORK/cuda-kernel-report.txt" ] && cp "$WORK/cuda-kernel-report.txt" "$OUT/"
        log "cuda_kernels: $KERNELS_STATUS"
    fi
    log "tests/cuda_backend.rs (PRFL_CUDA_REQUIRE=1)"
    echo "==== tests/cuda_backend.rs" >>"$TESTLOG"
    PRFL_CUDA_REQUIRE=1 RUST_BACKTRACE=1 timeout "$(cap 240)" \
        "$BIN/cuda_backend" --nocapture --test-threads 1 >>"$TESTLOG" 2>&1
    rc=$?
    TESTS_STATUS=$([ $rc -eq 0 ] && echo passed || echo "FAILED (exit $rc)")
    log "cuda_backend: $TESTS_STATUS"
fi

# ------------------------------------------------------------------------------------ 3. peak
PEAK_JSON="$WORK/peak.json"
PEAK=""
if [ -n "$PY" ] && [ "$(left)" -gt 60 ]; then
    log "bf16 GEMM peak and copy bandwidth (torch)"
    timeout "$(cap 60)" "$PY" tools/bench/torch_gpu.py --measure-peak --json "$PEAK_JSON" >>"$BENCHLOG" 2>&1
    PEAK="$("$PY" -c 'import json,sys; print("%.1f" % json.load(open(sys.argv[1]))["bf16_gemm_tflops"])' "$PEAK_JSON" 2>/dev/null)"
    log "measured bf16 GEMM: ${PEAK:-?} TFLOP/s"
fi

# ------------------------------------------------------------------------------------ 4. benchmarks
LORA_FLAG=()
[ "${RUN_ALL_LORA:-0}" = "1" ] && LORA_FLAG=(--lora)
PEAK_FLAG=()
[ -n "$PEAK" ] && PEAK_FLAG=(--peak-tflops "$PEAK")
if [ "${RUN_ALL_SKIP_BENCH:-0}" != "1" ]; then
    for preset in ${RUN_ALL_PRESETS:-240p 480p}; do
        case $preset in
        480p) PRFL_CAP=170 TORCH_CAP=110 BUDGET=15 ;;
        *) PRFL_CAP=90 TORCH_CAP=60 BUDGET=8 ;;
        esac
        if [ -n "$BIN" ] && [ "$(left)" -gt 45 ]; then
            log "prfl bench --preset $preset (cap $(cap $PRFL_CAP) s)"
            echo "==== prfl bench --preset $preset" >>"$BENCHLOG"
            timeout "$(cap $PRFL_CAP)" "$BIN/prfl" bench --device cuda:0 --cuda-lib-dir "$LIBDIR" \
                --preset "$preset" --budget "$BUDGET" --max-reps 3 "${LORA_FLAG[@]}" "${PEAK_FLAG[@]}" \
                --json "$WORK/prfl-$preset.json" >>"$BENCHLOG" 2>&1 ||
                log "prfl bench $preset: exit $? (partial results kept)"
        else
            log "prfl bench $preset: skipped ($(left) s left)"
        fi
        if [ -n "$PY" ] && [ "$(left)" -gt 40 ]; then
            log "torch_gpu.py --preset $preset (cap $(cap $TORCH_CAP) s)"
            echo "==== torch_gpu.py --preset $preset" >>"$BENCHLOG"
            timeout "$(cap $TORCH_CAP)" "$PY" tools/bench/torch_gpu.py --preset "$preset" \
                --budget "$BUDGET" --max-reps 3 "${LORA_FLAG[@]}" "${PEAK_FLAG[@]}" \
                --json "$WORK/torch-$preset.json" >>"$BENCHLOG" 2>&1 ||
                log "torch_gpu.py $preset: exit $? (partial results kept)"
        else
            log "torch_gpu.py $preset: skipped ($(left) s left)"
        fi
    done
fi

# ------------------------------------------------------------------------------------ summary
{
    echo "prfl GPU suite, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
    echo "binaries: $([ -n "$BIN" ] && echo "$BIN (commit $(cat "$BIN/COMMIT" 2>/dev/null || echo built-here))" || echo none)"
    echo "tests/cuda_kernels.rs: $KERNELS_STATUS"
    echo "tests/cuda_backend.rs: $TESTS_STATUS"
    grep -E "^[a-z_]+: [0-9]+ checks, [0-9]+ failed|^test result|^test .* FAILED|^    [a-z_]+$" "$TESTLOG" 2>/dev/null | sed 's/^/  /' | head -40
    grep -E "^  FAIL " "$TESTLOG" 2>/dev/null | head -25 | sed 's/^/  /'
} >>"$SUMMARY"
if [ -n "$PY" ]; then
    "$PY" tools/gpu/compare.py --peak "$PEAK_JSON" --results "$OUT/results.json" "$WORK"/prfl-*.json "$WORK"/torch-*.json >>"$SUMMARY" 2>&1
else
    python3 tools/gpu/compare.py --peak "$PEAK_JSON" --results "$OUT/results.json" "$WORK"/prfl-*.json >>"$SUMMARY" 2>&1
fi
echo "(total $(elapsed) s; logs in \$OUT: tests.log bench.log env.txt results.json)" >>"$SUMMARY"
echo
echo "================================================================ summary"
cat "$SUMMARY"
