#!/usr/bin/env bash
# Builds and runs every sample against the built prfl library (CI runs this through
# tests/samples.rs):
#
#   c        samples/c/main.c against libprfl.a and libprfl.so, then under valgrind (when installed)
#            and AddressSanitizer
#   cpp      samples/cpp/main.cpp (bindings/cpp/prfl.hpp) against libprfl.a and libprfl.so
#   unreal   the plugin staged into a scratch project; its engine-independent core
#            (PrflCore.cpp) built with g++ and tested against libprfl.so
#   unity    Prfl.cs's struct layouts checked against prfl.h, SmokeTest.cs under Mono against
#            libprfl.so, PrflPreferenceLearner.cs type-checked against a UnityEngine stub
#
# Every sample uses the committed tiny T2V test model (tests/fixtures/wan/t2v_small).
#
# Environment:
#   PRFL_LIB_DIR          directory with libprfl.a and libprfl.so; default: build them with
#                         `cargo build --release --lib` and use <target dir>/release
#   PRFL_INCLUDE_DIR      directory with prfl.h; default: include/
#   PRFL_SAMPLES_OUT      build and scratch directory; default: a temporary one, removed on exit
#   PRFL_SAMPLES_REQUIRE  comma-separated optional parts that must run instead of being skipped
#                         when their tools are missing: mono, valgrind (CI sets both)
#   PRFL_SAMPLES_ONLY     comma-separated subset of c,cpp,unreal,unity to run
#   PRFL_SAMPLES_CUDA_LIB_DIR
#                         a folder of CUDA libraries (CI: the emulated device's stand-ins that
#                         tests/common/cuda_emu.rs builds): the shared C sample then also runs
#                         with device = cuda, taking its libraries from there (c-cuda)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

say() { printf '== %s\n' "$*"; }
die() { printf 'samples: ERROR: %s\n' "$*" >&2; exit 1; }
wants() { [[ -z "${PRFL_SAMPLES_ONLY:-}" || ",$PRFL_SAMPLES_ONLY," == *",$1,"* ]]; }
required() { [[ ",${PRFL_SAMPLES_REQUIRE:-}," == *",$1,"* ]]; }

passed=()
skipped=()
skip() { # skip PART TOOL REASON: fatal when the part is required
    if required "$2"; then die "$1 needs $2 (PRFL_SAMPLES_REQUIRE includes $2): $3"; fi
    printf 'SKIPPED %s: %s\n' "$1" "$3"
    skipped+=("$1 ($3)")
}

# ---------------------------------------------------------------------------------------------
# Inputs.

header_dir="${PRFL_INCLUDE_DIR:-$root/include}"
[[ -f "$header_dir/prfl.h" ]] || die "$header_dir/prfl.h is missing (the C header the samples compile against)"
export PRFL_INCLUDE_DIR="$header_dir"  # for stage_plugin.sh
generator="$root/tests/fixtures/wan/t2v_small/original"
single_file="$root/tests/fixtures/wan/t2v_small/diffusers/diffusion_pytorch_model.safetensors"
single_config="$root/tests/fixtures/wan/t2v_small/diffusers/config.json"
[[ -d "$generator" && -f "$single_file" ]] || die "test fixture tests/fixtures/wan/t2v_small is missing"

if [[ -n "${PRFL_LIB_DIR:-}" ]]; then
    lib_dir="$(cd "$PRFL_LIB_DIR" && pwd)"
else
    say "building the library (cargo build --release --lib)"
    cargo build --release --lib
    lib_dir="$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release"
fi
for f in libprfl.a libprfl.so; do
    [[ -f "$lib_dir/$f" ]] || die "$lib_dir/$f is missing (set PRFL_LIB_DIR or build with cargo build --release)"
done

if [[ -n "${PRFL_SAMPLES_OUT:-}" ]]; then
    out="$PRFL_SAMPLES_OUT"
    mkdir -p "$out"
else
    out="$(mktemp -d "${TMPDIR:-/tmp}/prfl-samples.XXXXXX")"
    trap 'rm -rf "$out"' EXIT
fi
out="$(cd "$out" && pwd)"

# libprfl.so carries a SONAME with the ABI major version (libprfl.so.1, see build.rs): a program
# linked with -lprfl asks the loader for that name. Stage the library under both names, as an
# install does (tools/install.sh), so that LD_LIBRARY_PATH finds it.
soname="$(readelf -d "$lib_dir/libprfl.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
staged_lib="$out/lib"
rm -rf "$staged_lib"
mkdir -p "$staged_lib"
ln -s "$lib_dir/libprfl.a" "$staged_lib/libprfl.a"
ln -s "$lib_dir/libprfl.so" "$staged_lib/libprfl.so"
if [[ -n "$soname" && "$soname" != libprfl.so ]]; then
    ln -s "$lib_dir/libprfl.so" "$staged_lib/$soname"
fi
lib_dir="$staged_lib"
echo "library: $lib_dir (SONAME ${soname:-none})"
echo "scratch: $out"

# What Rust's staticlib needs from the system when linked into a C/C++ program.
static_libs=(-lpthread -ldl -lm)
cflags=(-std=c11 -O1 -g -Wall -Wextra -Werror -I"$header_dir")
cxxwarn=(-std=c++17 -O1 -g -Wall -Wextra -Wpedantic -Wshadow -Werror)
cxxflags=("${cxxwarn[@]}" -I"$header_dir" -I"$root/bindings/cpp")
# Every sample run is bounded: a hang (a lost wake-up, a dead trainer) fails instead of stalling CI.
run_timeout=(timeout --kill-after=10 900)

# run NAME [ENV=VALUE...] CMD...: runs one sample in a fresh work directory, output to the console.
run() {
    local name="$1"
    shift
    local work="$out/work/$name"
    rm -rf "$work"
    mkdir -p "$work"
    say "run $name"
    local start=$SECONDS
    # The work dir is the last argument of every sample; callers pass "@WORK@" for it.
    local args=()
    for a in "$@"; do args+=("${a//@WORK@/$work}"); done
    if ! env "${args[@]}"; then
        die "$name failed"
    fi
    passed+=("$name ($((SECONDS - start))s)")
}

# The shared-library build must really load libprfl.so, and the static one must not need it.
check_linkage() { # check_linkage BINARY shared|static
    local needs
    needs="$(readelf -d "$1" 2>/dev/null | grep -c 'NEEDED.*libprfl' || true)"
    if [[ "$2" == shared && "$needs" -eq 0 ]]; then die "$1 does not link libprfl.so dynamically"; fi
    if [[ "$2" == static && "$needs" -ne 0 ]]; then die "$1 links libprfl.so though built against libprfl.a"; fi
}

# ---------------------------------------------------------------------------------------------
# C

if wants c; then
    say "build c (static, shared)"
    gcc "${cflags[@]}" samples/c/main.c "$lib_dir/libprfl.a" "${static_libs[@]}" -o "$out/c_static"
    gcc "${cflags[@]}" samples/c/main.c -L"$lib_dir" -lprfl -lpthread -lm -o "$out/c_shared"
    check_linkage "$out/c_static" static
    check_linkage "$out/c_shared" shared
    run c-static "${run_timeout[@]}" "$out/c_static" "$generator" @WORK@
    run c-shared LD_LIBRARY_PATH="$lib_dir" "${run_timeout[@]}" "$out/c_shared" "$generator" @WORK@
    if [[ -n "${PRFL_SAMPLES_CUDA_LIB_DIR:-}" ]]; then
        # The same program on the CUDA backend (no CPU fallback), libraries from the folder.
        run c-cuda LD_LIBRARY_PATH="$lib_dir" PRFL_SAMPLE_DEVICE=cuda \
            PRFL_SAMPLE_CUDA_LIB_DIR="$PRFL_SAMPLES_CUDA_LIB_DIR" "${run_timeout[@]}" \
            "$out/c_shared" "$generator" @WORK@
    fi

    if command -v valgrind >/dev/null 2>&1; then
        # Definite and indirect leaks fail; "possibly lost" is how valgrind sees memory that the
        # library's worker threads still hold at exit (a thread pool lives for the process).
        run c-valgrind "${run_timeout[@]}" valgrind --quiet --error-exitcode=1 --leak-check=full \
            --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
            "$out/c_static" "$generator" @WORK@
    else
        skip c-valgrind valgrind "valgrind not installed (apt-get install -y valgrind)"
    fi

    # AddressSanitizer instruments the C side (the Rust side is not rebuilt) and LeakSanitizer
    # sees every allocation, so it catches misuse of the API and leaks through prfl_destroy.
    say "build c (AddressSanitizer)"
    gcc "${cflags[@]}" -fsanitize=address,undefined -fno-omit-frame-pointer samples/c/main.c \
        "$lib_dir/libprfl.a" "${static_libs[@]}" -o "$out/c_asan"
    run c-asan ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1 \
        "${run_timeout[@]}" "$out/c_asan" "$generator" @WORK@
fi

# ---------------------------------------------------------------------------------------------
# C++

if wants cpp; then
    say "build cpp (static, shared)"
    g++ "${cxxflags[@]}" samples/cpp/main.cpp "$lib_dir/libprfl.a" "${static_libs[@]}" -o "$out/cpp_static"
    g++ "${cxxflags[@]}" samples/cpp/main.cpp -L"$lib_dir" -lprfl -lpthread -o "$out/cpp_shared"
    check_linkage "$out/cpp_static" static
    check_linkage "$out/cpp_shared" shared
    run cpp-static "${run_timeout[@]}" "$out/cpp_static" "$generator" @WORK@ "$single_file" "$single_config"
    run cpp-shared LD_LIBRARY_PATH="$lib_dir" "${run_timeout[@]}" "$out/cpp_shared" "$generator" @WORK@ \
        "$single_file" "$single_config"
fi

# ---------------------------------------------------------------------------------------------
# Unreal: stage the plugin as a user would, then build its engine-independent core from the
# staged copy (so the staged include layout is what gets tested).

if wants unreal; then
    say "stage unreal plugin"
    plugins="$out/UnrealProject/Plugins"
    bash samples/unreal/stage_plugin.sh "$plugins" "$lib_dir"
    staged="$plugins/PrflPlugin/Source"
    for f in ThirdParty/PrflLibrary/include/prfl.h ThirdParty/PrflLibrary/include/prfl.hpp \
        ThirdParty/PrflLibrary/lib/Linux/libprfl.so Prfl/Private/PrflCore.cpp; do
        [[ -f "$staged/$f" ]] || die "stage_plugin.sh did not produce $f"
    done
    say "build unreal core test"
    g++ "${cxxwarn[@]}" -I"$staged/ThirdParty/PrflLibrary/include" -I"$staged/Prfl/Private" \
        samples/unreal/tests/PrflCoreTest.cpp "$staged/Prfl/Private/PrflCore.cpp" \
        -L"$staged/ThirdParty/PrflLibrary/lib/Linux" -lprfl -lpthread -o "$out/unreal_core_test"
    run unreal-core LD_LIBRARY_PATH="$staged/ThirdParty/PrflLibrary/lib/Linux" "${run_timeout[@]}" \
        "$out/unreal_core_test" "$generator" @WORK@
fi

# ---------------------------------------------------------------------------------------------
# Unity (Mono)

if wants unity; then
    if command -v mcs >/dev/null 2>&1 && command -v mono >/dev/null 2>&1; then
        say "build unity"
        gcc "${cflags[@]}" samples/unity/ci/layout.c -o "$out/unity_layout"
        "$out/unity_layout" >"$out/unity_layout.txt"
        mcs -nologo -warnaserror -out:"$out/SmokeTest.exe" samples/unity/Prfl.cs samples/unity/SmokeTest.cs
        # The component only compiles inside Unity; a stub UnityEngine lets CI type-check it.
        mcs -nologo -warnaserror -define:UNITY_5_3_OR_NEWER -target:library -out:"$out/UnityTypeCheck.dll" \
            samples/unity/Prfl.cs samples/unity/PrflPreferenceLearner.cs samples/unity/ci/UnityEngineStub.cs
        # DllImport("prfl") resolves to libprfl.so through the loader's search path.
        run unity-mono LD_LIBRARY_PATH="$lib_dir" "${run_timeout[@]}" mono --debug "$out/SmokeTest.exe" \
            "$generator" @WORK@ "$out/unity_layout.txt"
    else
        skip unity mono "mcs/mono not installed (apt-get install -y mono-mcs mono-runtime)"
    fi
fi

# ---------------------------------------------------------------------------------------------

say "summary"
for p in "${passed[@]+"${passed[@]}"}"; do echo "passed   $p"; done
for s in "${skipped[@]+"${skipped[@]}"}"; do echo "skipped  $s"; done
echo "samples: OK"
