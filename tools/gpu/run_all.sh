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
# 600 s a command); every stage has its own time cap (`timeout`, so a hang costs its cap and no
# more) and is skipped when too little time is left. In order of what a first GPU run must show:
#   1. nvidia-smi, the Python with torch, the CUDA libraries (libnvrtc, libcublas, libcublasLt may
#      be only in torch's nvidia/* pip packages: gathered into one folder passed to prfl as
#      PRFL_CUDA_LIB_DIR / --cuda-lib-dir, with the bare lib*.so names too), ptxas, and
#      `prfl devices`: the file each library was actually loaded from and its version (prfl
#      refuses CUDA-12 libraries, cuBLAS/cuBLASLt of two releases, or a folder bypassed);
#   2. the kernel compile check (tests/cuda_kernels.rs, PRFL_KERNELS_REQUIRE=1) and the GPU suite
#      against the CPU backend (tests/cuda_backend.rs, PRFL_CUDA_REQUIRE=1);
#   3. the tensor-core attention against the simple f32 kernels at L = 8192, d = 128, forward and
#      backward (tests/cuda_backend.rs attention_long_tensor_cores_vs_simple, PRFL_CUDA_LONG=1);
#   4. the measured bf16 GEMM peak and copy bandwidth (torch);
#   5. `prfl bench --preset 240p|480p` and `tools/bench/torch_gpu.py --preset 240p|480p` one after
#      the other (never concurrently), then the comparison table (tools/gpu/compare.py);
#   6. compute-sanitizer racecheck and memcheck on the attention, linear and norm tests, where a
#      compute-sanitizer is found and the machine is not gVisor (whose GPU proxy does not support
#      it); last, as the slowest and the least sure to work here.
# The caps add up to more than the deadline on purpose: each is what its stage may take at worst,
# and a stage that finishes early leaves its time to the later ones (the sanitizers, last, get
# what is left). The compiled kernels are cached in one folder for all stages
# (PRFL_KERNEL_CACHE), so only the first pays for NVRTC.
# Results go to $OUT (at most 8 files come back): summary.txt (one table of every stage with its
# status and time, then the benchmark table; printed last too), results.json, tests.log,
# sanitizer.log, bench.log, env.txt, cuda-kernel-report.txt.
#
# Knobs: RUN_ALL_PRESETS (default "240p 480p"), RUN_ALL_SKIP_TESTS=1, RUN_ALL_SKIP_BENCH=1,
# RUN_ALL_SKIP_SANITIZER=1, RUN_ALL_LORA=1 (PRFL with LoRA instead of full fine-tuning), PYTHON,
# PRFL_CUDA_LIB_DIR, RUN_ALL_BIN (a folder with prfl, cuda_backend, cuda_kernels: for a dry run of
# the script itself on a machine without a GPU, with debug builds).
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
SANLOG="$OUT/sanitizer.log"
BENCHLOG="$OUT/bench.log"
SUMMARY="$OUT/summary.txt"
STAGES="$WORK/stages.txt"
: >"$ENVLOG"
: >"$TESTLOG"
: >"$SANLOG"
: >"$BENCHLOG"
: >"$SUMMARY"
: >"$STAGES"
export PRFL_KERNEL_CACHE="$WORK/kernel-cache"
export PYTHONUNBUFFERED=1

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((DEADLINE - $(elapsed))); }
log() { echo "[$(elapsed)s] $*" | tee -a "$ENVLOG" >&2; }
note() { echo "$*" >>"$SUMMARY"; }
# stage NAME STATUS SECONDS NOTE: one row of the summary's stage table.
stage() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$STAGES"; }
# status EXIT_CODE: passed, TIMED OUT (timeout's 124/137) or FAILED (exit N).
status() {
    case $1 in
    0) echo passed ;;
    124 | 137) echo "TIMED OUT" ;;
    *) echo "FAILED (exit $1)" ;;
    esac
}
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
if [ -n "${RUN_ALL_BIN:-}" ]; then
    BIN="$(cd "$RUN_ALL_BIN" && pwd)"
    log "binaries: RUN_ALL_BIN=$BIN"
elif [ -x .gpu-bin/prfl ] && [ -x .gpu-bin/cuda_backend ]; then
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
LIBS_NOTE="no prfl binary"
if [ -n "$BIN" ]; then
    # The libraries prfl actually loaded (file and version) and the devices it sees.
    echo "== prfl devices --cuda-lib-dir $LIBDIR" >>"$ENVLOG"
    "$BIN/prfl" devices --cuda-lib-dir "$LIBDIR" >"$WORK/devices.txt" 2>&1 || "$BIN/prfl" --version >>"$WORK/devices.txt" 2>&1
    cat "$WORK/devices.txt" >>"$ENVLOG"
    cat "$WORK/devices.txt" >&2
    LIBS_NOTE="$(grep -c '^device ' "$WORK/devices.txt") device(s); the libraries' files and versions below"
fi
stage "libraries and devices (prfl devices)" "$(grep -q '^device ' "$WORK/devices.txt" 2>/dev/null && echo found || echo "NO DEVICE")" "$(elapsed)" "$LIBS_NOTE"

# ------------------------------------------------------------------------------------ 2-3. tests
# run_test NAME CAP LOG ENV... -- COMMAND...: one timed stage, its output appended to LOG.
run_test() {
    local name=$1 want=$2 logf=$3 t0 rc
    shift 3
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    if [ "$(left)" -lt 30 ]; then
        stage "$name" skipped 0 "$(left) s left"
        log "$name: skipped ($(left) s left)"
        return
    fi
    log "$name (cap $(cap "$want") s)"
    echo "==== $name: $*" >>"$logf"
    t0=$(date +%s)
    env "${envs[@]}" timeout "$(cap "$want")" "$@" >>"$logf" 2>&1
    rc=$?
    # Notes: libtest's counts of tests, and the Report counts of checks, of this stage.
    stage "$name" "$(status $rc)" $(($(date +%s) - t0)) "$({
        grep -E '^test result:' "$logf" | tail -1 | sed -E 's/^test result: [A-Za-z]+\. ([0-9]+ passed; [0-9]+ failed).*/tests: \1/'
        grep -E '^[a-z_]+: [0-9]+ checks, [0-9]+ failed$' "$logf" | awk '{c += $2; f += $4} END {if (NR) printf "checks: %d, %d failed", c, f}'
    } | paste -sd ';' -)"
    log "$name: $(status $rc)"
}
if [ -n "$BIN" ] && [ "${RUN_ALL_SKIP_TESTS:-0}" != "1" ]; then
    if [ -x "$BIN/cuda_kernels" ]; then
        run_test "kernel compile check (cuda_kernels)" 60 "$TESTLOG" PRFL_KERNELS_REQUIRE=1 CARGO_TARGET_DIR="$WORK" -- \
            "$BIN/cuda_kernels" --nocapture --test-threads 1
        [ -f "$WORK/cuda-kernel-report.txt" ] && cp "$WORK/cuda-kernel-report.txt" "$OUT/"
    fi
    # The per-test check counts of this stage only (the log is shared).
    : >"$WORK/suite.log"
    run_test "GPU suite (cuda_backend, PRFL_CUDA_REQUIRE=1)" 180 "$WORK/suite.log" PRFL_CUDA_REQUIRE=1 RUST_BACKTRACE=1 -- \
        "$BIN/cuda_backend" --nocapture --test-threads 1
    cat "$WORK/suite.log" >>"$TESTLOG"
    : >"$WORK/long.log"
    run_test "attention L=8192 d=128 tensor cores vs simple" 45 "$WORK/long.log" PRFL_CUDA_REQUIRE=1 PRFL_CUDA_LONG=1 -- \
        "$BIN/cuda_backend" --nocapture --test-threads 1 --exact attention_long_tensor_cores_vs_simple
    cat "$WORK/long.log" >>"$TESTLOG"
fi

# ------------------------------------------------------------------------------------ 3. peak
PEAK_JSON="$WORK/peak.json"
PEAK=""
if [ -n "$PY" ] && [ "$(left)" -gt 60 ]; then
    log "bf16 GEMM peak and copy bandwidth (torch)"
    timeout "$(cap 60)" "$PY" tools/bench/torch_gpu.py --measure-peak --json "$PEAK_JSON" >>"$BENCHLOG" 2>&1
    PEAK="$("$PY" -c 'import json,sys; print("%.1f" % json.load(open(sys.argv[1]))["bf16_gemm_tflops"])' "$PEAK_JSON" 2>/dev/null)"
    log "measured bf16 GEMM: ${PEAK:-?} TFLOP/s"
    stage "bf16 GEMM peak (torch)" "$([ -n "$PEAK" ] && echo measured || echo FAILED)" "-" "${PEAK:-?} TFLOP/s"
else
    stage "bf16 GEMM peak (torch)" skipped 0 "$([ -n "$PY" ] && echo "$(left) s left" || echo "no torch")"
fi

# ------------------------------------------------------------------------------------ 4. benchmarks
LORA_FLAG=()
[ "${RUN_ALL_LORA:-0}" = "1" ] && LORA_FLAG=(--lora)
PEAK_FLAG=()
[ -n "$PEAK" ] && PEAK_FLAG=(--peak-tflops "$PEAK")
if [ "${RUN_ALL_SKIP_BENCH:-0}" != "1" ]; then
    for preset in ${RUN_ALL_PRESETS:-240p 480p}; do
        case $preset in
        480p) PRFL_CAP=140 TORCH_CAP=90 BUDGET=15 ;;
        *) PRFL_CAP=75 TORCH_CAP=50 BUDGET=8 ;;
        esac
        if [ -n "$BIN" ] && [ "$(left)" -gt 45 ]; then
            log "prfl bench --preset $preset (cap $(cap $PRFL_CAP) s)"
            echo "==== prfl bench --preset $preset" >>"$BENCHLOG"
            t0=$(date +%s)
            timeout "$(cap $PRFL_CAP)" "$BIN/prfl" bench --device cuda:0 --cuda-lib-dir "$LIBDIR" \
                --preset "$preset" --budget "$BUDGET" --max-reps 3 "${LORA_FLAG[@]}" "${PEAK_FLAG[@]}" \
                --json "$WORK/prfl-$preset.json" >>"$BENCHLOG" 2>&1
            rc=$?
            stage "prfl bench $preset" "$(status $rc)" $(($(date +%s) - t0)) "partial results kept"
            [ $rc -eq 0 ] || log "prfl bench $preset: $(status $rc) (partial results kept)"
        else
            stage "prfl bench $preset" skipped 0 "$(left) s left"
            log "prfl bench $preset: skipped ($(left) s left)"
        fi
        if [ -n "$PY" ] && [ "$(left)" -gt 40 ]; then
            log "torch_gpu.py --preset $preset (cap $(cap $TORCH_CAP) s)"
            echo "==== torch_gpu.py --preset $preset" >>"$BENCHLOG"
            t0=$(date +%s)
            timeout "$(cap $TORCH_CAP)" "$PY" tools/bench/torch_gpu.py --preset "$preset" \
                --budget "$BUDGET" --max-reps 3 "${LORA_FLAG[@]}" "${PEAK_FLAG[@]}" \
                --json "$WORK/torch-$preset.json" >>"$BENCHLOG" 2>&1
            rc=$?
            stage "torch_gpu.py $preset" "$(status $rc)" $(($(date +%s) - t0)) "partial results kept"
            [ $rc -eq 0 ] || log "torch_gpu.py $preset: $(status $rc) (partial results kept)"
        else
            stage "torch_gpu.py $preset" skipped 0 "$([ -n "$PY" ] && echo "$(left) s left" || echo "no torch")"
            log "torch_gpu.py $preset: skipped ($(left) s left)"
        fi
    done
fi

# ------------------------------------------------------------------------------------ 6. sanitizers
SANITIZER=""
for p in "$(command -v compute-sanitizer 2>/dev/null)" /usr/local/cuda/bin/compute-sanitizer \
    /usr/local/cuda-13*/bin/compute-sanitizer; do
    if [ -n "$p" ] && [ -x "$p" ]; then SANITIZER="$p"; break; fi
done
if [ -z "$SANITIZER" ] && [ -n "$PY" ]; then
    SANITIZER="$("$PY" -c 'import glob, nvidia; print(next(iter(g for r in nvidia.__path__ for g in glob.glob(r + "/*/compute-sanitizer/compute-sanitizer") + glob.glob(r + "/*/bin/compute-sanitizer")), ""))' 2>/dev/null)"
fi
# gVisor reports a fixed 4.4.0 kernel, and its GPU proxy cannot host the sanitizer's debugger
# interface: there the stage would only hang until its cap.
GVISOR=0
{ [ "$(uname -r)" = "4.4.0" ] || grep -qi gvisor /proc/version 2>/dev/null; } && GVISOR=1
SAN_TESTS=(attention linear norms)
for tool in racecheck memcheck; do
    name="compute-sanitizer $tool (${SAN_TESTS[*]})"
    if [ "${RUN_ALL_SKIP_SANITIZER:-0}" = "1" ] || [ "${RUN_ALL_SKIP_TESTS:-0}" = "1" ]; then
        stage "$name" skipped 0 "RUN_ALL_SKIP_*"
    elif [ -z "$BIN" ]; then
        stage "$name" skipped 0 "no binaries"
    elif [ -z "$SANITIZER" ]; then
        stage "$name" skipped 0 "no compute-sanitizer found"
    elif [ "$GVISOR" = "1" ]; then
        stage "$name" skipped 0 "gVisor ($(uname -r)): not supported"
    else
        : >"$WORK/san.log"
        # --error-exitcode: a hazard or an invalid access fails the stage even when the tests
        # pass; the leak check stays off (the shared test backend lives until exit).
        run_test "$name" 75 "$WORK/san.log" PRFL_CUDA_REQUIRE=1 -- \
            "$SANITIZER" --tool "$tool" --error-exitcode 86 --print-limit 20 \
            "$BIN/cuda_backend" --nocapture --test-threads 1 "${SAN_TESTS[@]}"
        grep -E "========= (ERROR SUMMARY|Error|Invalid|Race)" "$WORK/san.log" | head -5 | sed "s/^/[$tool] /" >>"$WORK/san-summary.txt"
        cat "$WORK/san.log" >>"$SANLOG"
    fi
done

# ------------------------------------------------------------------------------------ summary
{
    echo "prfl GPU suite, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
    echo "binaries: $([ -n "$BIN" ] && echo "$BIN (commit $(cat "$BIN/COMMIT" 2>/dev/null || echo built-here))" || echo none)"
    echo
    "${PY:-python3}" - "$STAGES" <<'PY' 2>/dev/null || cat "$STAGES"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
head = ["stage", "status", "s", "notes"]
rows = [(r + [""] * 4)[:4] for r in rows]
w = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
line = lambda r: "| " + " | ".join(c.ljust(w[i]) if i < 3 else c for i, c in enumerate(r)) + " |"
print(line(head))
print("|" + "|".join("-" * (x + 2) for x in w) + "|------|")
for r in rows:
    print(line(r))
PY
    echo
    echo "prfl devices:"
    sed 's/^/  /' "$WORK/devices.txt" 2>/dev/null
    grep -E "^  FAIL " "$TESTLOG" 2>/dev/null | head -25 | sed 's/^/  /'
    grep -E "^test .* FAILED|panicked at" "$TESTLOG" 2>/dev/null | head -10 | sed 's/^/  /'
    cat "$WORK/san-summary.txt" 2>/dev/null
    grep -E "^  (forward|backward) (Simple|TensorCore): " "$TESTLOG" 2>/dev/null | sed 's/^/  L=8192 /'
} >>"$SUMMARY"
if [ -n "$PY" ]; then
    "$PY" tools/gpu/compare.py --peak "$PEAK_JSON" --results "$OUT/results.json" "$WORK"/prfl-*.json "$WORK"/torch-*.json >>"$SUMMARY" 2>&1
else
    python3 tools/gpu/compare.py --peak "$PEAK_JSON" --results "$OUT/results.json" "$WORK"/prfl-*.json >>"$SUMMARY" 2>&1
fi
echo "(total $(elapsed) s; logs in \$OUT: tests.log sanitizer.log bench.log env.txt results.json)" >>"$SUMMARY"
echo
echo "================================================================ summary"
cat "$SUMMARY"
