#!/usr/bin/env bash
# Copies PrflPlugin into an Unreal project's Plugins folder together with the prfl headers and
# the built library, in the layout PrflLibrary.Build.cs expects.
#
# usage: samples/unreal/stage_plugin.sh PROJECT_PLUGINS_DIR [LIB_DIR]
#   LIB_DIR  where the built library is (default: target/release). Whatever is found there is
#            staged: libprfl.so (Linux, as its SONAME libprfl.so.1 plus the libprfl.so link),
#            prfl.dll + prfl.dll.lib (Win64; for a mingw-built prfl.dll without prfl.dll.lib,
#            the import library is made from packaging/prfl.def with dlltool), libprfl.dylib (Mac).
#   PRFL_INCLUDE_DIR (environment)  where prfl.h is (default: include/)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dest="${1:?usage: stage_plugin.sh PROJECT_PLUGINS_DIR [LIB_DIR]}"
lib_dir="${2:-$root/target/release}"
include_dir="${PRFL_INCLUDE_DIR:-$root/include}"

[[ -f "$include_dir/prfl.h" ]] || { echo "stage_plugin: $include_dir/prfl.h is missing" >&2; exit 1; }

plugin="$dest/PrflPlugin"
third="$plugin/Source/ThirdParty/PrflLibrary"
mkdir -p "$dest"
rm -rf "$plugin"
cp -R "$here/PrflPlugin" "$plugin"
mkdir -p "$third/include"
cp "$include_dir/prfl.h" "$root/bindings/cpp/prfl.hpp" "$third/include/"

staged=0
stage() { # stage PLATFORM FILE...
    local platform="$1"
    shift
    for f in "$@"; do [[ -f "$lib_dir/$f" ]] || return 0; done
    mkdir -p "$third/lib/$platform"
    for f in "$@"; do cp "$lib_dir/$f" "$third/lib/$platform/"; done
    echo "stage_plugin: $platform: $*"
    staged=$((staged + 1))
}
if [[ -f "$lib_dir/libprfl.so" ]]; then
    # The loader looks for the SONAME (libprfl.so.1, the ABI major version): stage the library
    # under that name, with libprfl.so as the link-time symlink, as tools/install.sh installs it.
    soname="$(readelf -d "$lib_dir/libprfl.so" 2>/dev/null |
        sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
    soname="${soname:-libprfl.so}"
    mkdir -p "$third/lib/Linux"
    cp "$lib_dir/libprfl.so" "$third/lib/Linux/$soname"
    [[ "$soname" == libprfl.so ]] || ln -sf "$soname" "$third/lib/Linux/libprfl.so"
    echo "stage_plugin: Linux: $soname (libprfl.so -> $soname)"
    staged=$((staged + 1))
fi
if [[ -f "$lib_dir/prfl.dll" && ! -f "$lib_dir/prfl.dll.lib" ]]; then
    # A mingw-built prfl.dll (x86_64-pc-windows-gnu) comes with libprfl.dll.a, not the MSVC
    # import library PrflLibrary.Build.cs links: make prfl.dll.lib from the committed .def
    # (on Windows: lib /def:packaging\prfl.def /machine:x64 /out:prfl.dll.lib).
    dlltool="$(command -v x86_64-w64-mingw32-dlltool || command -v llvm-dlltool || true)"
    if [[ -n "$dlltool" ]]; then
        mkdir -p "$third/lib/Win64"
        cp "$lib_dir/prfl.dll" "$third/lib/Win64/"
        if [[ "$dlltool" == *llvm-dlltool ]]; then
            "$dlltool" -m i386:x86-64 -d "$root/packaging/prfl.def" -D prfl.dll -l "$third/lib/Win64/prfl.dll.lib"
        else
            "$dlltool" -d "$root/packaging/prfl.def" -D prfl.dll -l "$third/lib/Win64/prfl.dll.lib"
        fi
        echo "stage_plugin: Win64: prfl.dll, prfl.dll.lib (from packaging/prfl.def)"
        staged=$((staged + 1))
    else
        echo "stage_plugin: Win64: prfl.dll without prfl.dll.lib, and no dlltool to make one from" \
            "packaging/prfl.def: run lib /def:packaging\\prfl.def /machine:x64 /out:prfl.dll.lib" >&2
    fi
else
    stage Win64 prfl.dll prfl.dll.lib
fi
stage Mac libprfl.dylib
if [[ $staged -eq 0 ]]; then
    echo "stage_plugin: no library found in $lib_dir (build with: cargo build --release)" >&2
    exit 1
fi
echo "stage_plugin: staged $plugin"
