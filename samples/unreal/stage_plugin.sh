#!/usr/bin/env bash
# Copies PrflPlugin into an Unreal project's Plugins folder together with the prfl headers and
# the built library, in the layout PrflLibrary.Build.cs expects.
#
# usage: samples/unreal/stage_plugin.sh PROJECT_PLUGINS_DIR [LIB_DIR]
#   LIB_DIR  where the built library is (default: target/release). Whatever is found there is
#            staged: libprfl.so (Linux), prfl.dll + prfl.dll.lib (Win64), libprfl.dylib (Mac).
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
stage Linux libprfl.so
stage Win64 prfl.dll prfl.dll.lib
stage Mac libprfl.dylib
if [[ $staged -eq 0 ]]; then
    echo "stage_plugin: no library found in $lib_dir (build with: cargo build --release)" >&2
    exit 1
fi
echo "stage_plugin: staged $plugin"
