#!/usr/bin/env python3
"""No-op stand-ins for the CUDA libraries that PyPI's (CUDA) torch wheel is linked against, so that
`import torch` works on a CPU machine without the ~2.5 GB of nvidia-* wheels.

    python tools/oracle/cuda_stubs.py SITE_PACKAGES

The dynamic loader needs, for every library torch's shared objects name (DT_NEEDED) and that is
not on the machine: a file with that soname, the symbol versions torch asks for (a missing
version definition fails the load), and every symbol torch imports from it. So this script reads
torch's own objects with `readelf`, and per missing library writes a C file of one stub per
imported symbol (functions return an error status; data objects are zeroed buffers) and a version
script, and builds it with gcc into `SITE/nvidia/cu13/lib` (on torch's RPATH). The device queries
report no GPU (cudaGetDeviceCount -> 0 devices and cudaErrorNoDevice), so torch.cuda.is_available()
is False. Never use such an environment on a GPU machine.
"""

import glob
import os
import re
import subprocess
import sys
import tempfile

# Libraries every Linux machine has; never stubbed.
SYSTEM = re.compile(r"^(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|ld-linux|libgomp|libutil|libz)\b")
# Libraries that are CUDA's (what this script may stand in for).
CUDA_LIB = re.compile(r"^lib(cu|nccl|nvrtc|nvshmem|nvJitLink|nvToolsExt)")
# Symbols imported without a version, assigned to a library by name.
OWNER_BY_PREFIX = [
    (r"^cudnn", "libcudnn.so.9"), (r"^p?nccl", "libnccl.so.2"), (r"^cusparseLt", "libcusparseLt.so.0"),
    (r"^cuFile", "libcufile.so.0"), (r"^nvshmem", "libnvshmem_host.so.3"), (r"^cupti", "libcupti.so.13"),
    (r"^cublasLt", "libcublasLt.so.13"), (r"^cublas", "libcublas.so.13"), (r"^cufft", "libcufft.so.12"),
    (r"^cusparse", "libcusparse.so.12"), (r"^cusolver", "libcusolver.so.12"), (r"^nvrtc", "libnvrtc.so.13"),
    (r"^(__cuda|cuda)", "libcudart.so.13"), (r"^cu[A-Z]", "libcuda.so.1"),
]
# Functions whose stubs must answer "no device" rather than fail.
NO_DEVICE = {
    "cudaGetDeviceCount": "int cudaGetDeviceCount(int *n) { if (n) *n = 0; return 100; }",
    "cudaGetDevice": "int cudaGetDevice(int *d) { if (d) *d = 0; return 100; }",
    "cudaDriverGetVersion": "int cudaDriverGetVersion(int *v) { if (v) *v = 0; return 0; }",
    "cudaRuntimeGetVersion": "int cudaRuntimeGetVersion(int *v) { if (v) *v = 13000; return 0; }",
    "cudaGetLastError": "int cudaGetLastError(void) { return 0; }",
    "cudaPeekAtLastError": "int cudaPeekAtLastError(void) { return 0; }",
}
MESSAGE = re.compile(r"(ErrorString|ErrorName|StatusString|StatusName|GetLastErrorString)$")


def readelf(flag, path):
    return subprocess.run(["readelf", "-W", flag, path], capture_output=True, text=True, check=True).stdout


def scan(objects, present):
    """(missing libraries, {version: library}, {library: {symbol: kind}})."""
    missing, version_owner, imports, unversioned = set(), {}, {}, {}
    for obj in objects:
        for lib in re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", readelf("-d", obj)):
            if lib not in present and not SYSTEM.match(lib):
                missing.add(lib)
        current = None
        for line in readelf("-V", obj).splitlines():
            if m := re.search(r"File: (\S+)", line):
                current = m.group(1)
            elif (m := re.search(r"Name: (\S+)", line)) and current:
                version_owner[m.group(1)] = current
        for line in readelf("--dyn-syms", obj).splitlines():
            f = line.split()
            if len(f) < 8 or f[6] != "UND" or f[4] == "WEAK":
                continue
            kind, name = f[3], f[7]
            if "@" in name:
                sym, version = re.split(r"@+", name)[:2]
                lib = version_owner.get(version.split()[0])
                if lib and lib not in present and not SYSTEM.match(lib):
                    missing.add(lib)
                    imports.setdefault(lib, {})[sym] = kind
            else:
                unversioned[name] = kind
    for sym, kind in unversioned.items():
        for pattern, lib in OWNER_BY_PREFIX:
            if re.match(pattern, sym):
                missing.add(lib)
                imports.setdefault(lib, {})[sym] = kind
                break
    return missing, version_owner, imports


def stub_source(symbols):
    lines = ['static const char no_gpu[] = "CUDA stand-in: no GPU";']
    for sym, kind in sorted(symbols.items()):
        if kind == "OBJECT":
            lines.append(f"char {sym}[256];")
        elif sym in NO_DEVICE:
            lines.append(NO_DEVICE[sym])
        elif MESSAGE.search(sym):
            lines.append(f"const char *{sym}(void) {{ return no_gpu; }}")
        elif sym.startswith("__cuda"):
            lines.append(f"void *{sym}(void) {{ return 0; }}")
        else:
            lines.append(f"long {sym}(void) {{ return 100; }}")  # an error status
    return "\n".join(lines) + "\n"


def build(lib, symbols, versions, out_dir, work):
    src = os.path.join(work, lib + ".c")
    with open(src, "w") as fh:
        fh.write(stub_source(symbols))
    cmd = ["gcc", "-shared", "-fPIC", "-O0", "-w", f"-Wl,-soname,{lib}", "-o", os.path.join(out_dir, lib), src]
    if versions:
        script = os.path.join(work, lib + ".map")
        with open(script, "w") as fh:
            fh.write(f"{versions[0]} {{ global: *; }};\n")
            fh.writelines(f"{v} {{ }};\n" for v in versions[1:])
        cmd.append(f"-Wl,--version-script={script}")
    subprocess.run(cmd, check=True)


def main():
    site = sys.argv[1]
    torch_lib = os.path.join(site, "torch", "lib")
    objects = glob.glob(os.path.join(torch_lib, "*.so")) + glob.glob(os.path.join(site, "torch", "_C*.so"))
    if not objects:
        sys.exit(f"no torch shared objects under {site}")
    present = {os.path.basename(p) for p in glob.glob(os.path.join(torch_lib, "*.so*"))}
    missing, version_owner, imports = scan(objects, present)
    out_dir = os.path.join(site, "nvidia", "cu13", "lib")
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for lib in sorted(l for l in missing if CUDA_LIB.match(l)):
            versions = sorted(v for v, owner in version_owner.items() if owner == lib)
            build(lib, imports.get(lib, {}), versions, out_dir, work)
            print(f"{lib}: {len(imports.get(lib, {}))} symbols, versions {versions or '-'}")


if __name__ == "__main__":
    main()
