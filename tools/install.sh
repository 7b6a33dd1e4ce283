#!/usr/bin/env bash
# Installs prfl for C and C++ hosts into PREFIX:
#
#   PREFIX/include/prfl.h, prfl.hpp            the C ABI header and the header-only C++17 wrapper
#   PREFIX/lib/libprfl.so.<ABI>                the shared library, named by its SONAME
#   PREFIX/lib/libprfl.so -> libprfl.so.<ABI>  the link-time name (-lprfl)
#   PREFIX/lib/libprfl.a                       the static library (needs -lpthread -ldl -lm)
#   PREFIX/lib/pkgconfig/prfl.pc               pkg-config --cflags --libs prfl
#   PREFIX/lib/cmake/prfl/prflConfig.cmake, prflConfigVersion.cmake
#                                              find_package(prfl), target prfl::prfl (and
#                                              prfl::prfl_static)
#
# usage: tools/install.sh [--lib-dir DIR] [--libdir NAME] [--no-static] PREFIX
#   --lib-dir DIR  install the libprfl.so / libprfl.a already built in DIR (e.g. target/debug or,
#                  as the tests do, target/debug/deps) instead of running
#                  `cargo build --release --lib` and taking target/release
#   --libdir NAME  library folder under PREFIX (default: lib; e.g. lib64 or lib/x86_64-linux-gnu)
#   --no-static    leave libprfl.a out
#
# Linux only (the SONAME and pkg-config/CMake files describe the ELF library); Windows builds
# are described in README.md ("Windows").
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
die() { printf 'install: ERROR: %s\n' "$*" >&2; exit 1; }

lib_dir=""
libdir_name="lib"
static=1
prefix=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --lib-dir) lib_dir="${2:?--lib-dir needs a directory}"; shift 2 ;;
        --libdir) libdir_name="${2:?--libdir needs a name}"; shift 2 ;;
        --no-static) static=0; shift ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [[ -z "$prefix" ]] || die "more than one PREFIX given"; prefix="$1"; shift ;;
    esac
done
[[ -n "$prefix" ]] || die "usage: tools/install.sh [--lib-dir DIR] [--libdir NAME] [--no-static] PREFIX"
[[ "$(uname -s)" == Linux ]] || die "tools/install.sh installs the Linux library; see README.md for other systems"
command -v readelf >/dev/null 2>&1 || die "readelf (binutils) is needed to read the library's SONAME"

if [[ -z "$lib_dir" ]]; then
    echo "install: building the library (cargo build --release --lib)"
    (cd "$root" && cargo build --release --lib)
    lib_dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release"
fi
lib_dir="$(cd "$lib_dir" && pwd)"
so="$lib_dir/libprfl.so"
[[ -f "$so" ]] || die "$so is missing (build with cargo build --release --lib, or pass --lib-dir)"
[[ $static -eq 0 || -f "$lib_dir/libprfl.a" ]] || die "$lib_dir/libprfl.a is missing (or pass --no-static)"

# The names come from the library itself: SONAME libprfl.so.<ABI major> (build.rs).
soname="$(readelf -d "$so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
[[ "$soname" =~ ^libprfl\.so\.([0-9]+)$ ]] ||
    die "$so has SONAME '${soname:-none}', expected libprfl.so.<ABI major> (built without build.rs?)"
abi="${BASH_REMATCH[1]}"
header_abi="$(sed -n 's/^#define PRFL_ABI_VERSION \([0-9]*\)$/\1/p' "$root/include/prfl.h")"
[[ "$header_abi" == "$abi" ]] ||
    die "include/prfl.h has PRFL_ABI_VERSION ${header_abi:-?} but the library's SONAME is $soname"
version="$(sed -n 's/^version = "\([^"]*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)"
[[ "$version" =~ ^([0-9]+)\.([0-9]+)\. ]] || die "cannot read the package version from Cargo.toml"
major="${BASH_REMATCH[1]}"
minor="${BASH_REMATCH[2]}"

mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
inc="$prefix/include"
lib="$prefix/$libdir_name"
mkdir -p "$inc" "$lib/pkgconfig" "$lib/cmake/prfl"

install -m 644 "$root/include/prfl.h" "$root/bindings/cpp/prfl.hpp" "$inc/"
install -m 755 "$so" "$lib/$soname"
ln -sfn "$soname" "$lib/libprfl.so"
if [[ $static -eq 1 ]]; then
    install -m 644 "$lib_dir/libprfl.a" "$lib/libprfl.a"
else
    rm -f "$lib/libprfl.a"
fi

# @NAME@ placeholders of packaging/*.in.
render() { # render TEMPLATE DEST
    sed -e "s|@PREFIX@|$prefix|g" -e "s|@LIBDIR@|$libdir_name|g" -e "s|@ABI@|$abi|g" \
        -e "s|@VERSION@|$version|g" -e "s|@VERSION_MAJOR@|$major|g" -e "s|@VERSION_MINOR@|$minor|g" \
        "$1" >"$2"
    chmod 644 "$2"
}
render "$root/packaging/prfl.pc.in" "$lib/pkgconfig/prfl.pc"
render "$root/packaging/prflConfig.cmake.in" "$lib/cmake/prfl/prflConfig.cmake"
render "$root/packaging/prflConfigVersion.cmake.in" "$lib/cmake/prfl/prflConfigVersion.cmake"

echo "install: prfl $version (C ABI $abi) installed into $prefix"
echo "  pkg-config: PKG_CONFIG_PATH=$lib/pkgconfig pkg-config --cflags --libs prfl"
echo "  CMake:      cmake -DCMAKE_PREFIX_PATH=$prefix ...   find_package(prfl $major.$minor REQUIRED)"
