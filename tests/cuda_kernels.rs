//! Compile check of every CUDA kernel source, no GPU needed: each entry of
//! `prfl::backend::cuda::sources()` is compiled by NVRTC to PTX for sm_80, sm_89 and
//! sm_90, then assembled by `ptxas -v` for that architecture. The resource table (registers,
//! shared memory, stack frame, spills, 16-byte global accesses) is printed and written to
//! `<target dir>/cuda-kernel-report.txt`.
//!
//! Fails on a compile or assembler error, on a listed kernel missing from the output, on spills
//! in a kernel not listed in [`SPILLS_ALLOWED`], and on a kernel of [`MUST_VECTORISE`] without
//! 16-byte global accesses.
//!
//! Tools: `PRFL_NVRTC_LIB_DIR` (the folder holding `libnvrtc.so.13`, loaded by full path before
//! cudarc looks for it by name) and `PRFL_PTXAS` (the `ptxas` binary); `tools/cuda/install_wheels.sh
//! DIR` installs both from the pinned CUDA 13.0 PyPI wheels and prints the two exports. Without
//! them the test skips with a message, unless `PRFL_KERNELS_REQUIRE=1`, which makes it fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use prfl::backend::cuda;
use prfl::backend::cuda::compile::{self, Target};
use prfl::backend::cuda::types::KernelSource;

/// The architectures every source must compile for: A100, L4/L40/RTX 40, H100/H200.
const ARCHS: [(u32, u32); 3] = [(8, 0), (8, 9), (9, 0)];

/// Kernels allowed to spill registers to local memory (none so far).
const SPILLS_ALLOWED: &[&str] = &[];

/// Kernels whose bulk path must use 16-byte global loads or stores.
const MUST_VECTORISE: &[&str] = &[
    "silu_forward",
    "silu_backward",
    "gelu_tanh_forward",
    "gelu_tanh_backward",
    "relu_forward",
    "axpy",
    "scale",
    "layernorm_forward",
    "layernorm_backward_dx",
    "rmsnorm_forward",
    "rmsnorm_backward_dx",
    "modulate_forward",
    "modulate_backward_dx",
    "gated_add_forward",
    "gated_add_backward_dy",
    "rope",
    "sum_squares_partial",
    "adamw_update",
    "cast_f32_to_bf16",
    "cast_bf16_to_f32",
];

fn require() -> bool {
    std::env::var("PRFL_KERNELS_REQUIRE").is_ok_and(|v| v == "1")
}

/// Skips (returns `None`) or, under `PRFL_KERNELS_REQUIRE=1`, fails with `why`.
fn unavailable<T>(why: String) -> Option<T> {
    if require() {
        panic!("{why} (PRFL_KERNELS_REQUIRE=1)");
    }
    eprintln!(
        "SKIPPED cuda_kernels: {why}; run `eval \"$(tools/cuda/install_wheels.sh DIR)\"` to \
         install NVRTC and ptxas"
    );
    None
}

/// `(ptxas)` once NVRTC is loaded from `PRFL_NVRTC_LIB_DIR`.
fn tools() -> Option<PathBuf> {
    let (Ok(lib_dir), Ok(ptxas)) = (
        std::env::var("PRFL_NVRTC_LIB_DIR"),
        std::env::var("PRFL_PTXAS"),
    ) else {
        return unavailable("PRFL_NVRTC_LIB_DIR and PRFL_PTXAS are not both set".to_string());
    };
    let lib_dir = PathBuf::from(lib_dir);
    let ptxas = PathBuf::from(ptxas);
    if !ptxas.is_file() {
        return unavailable(format!("PRFL_PTXAS={} is not a file", ptxas.display()));
    }
    // The builtins library first: libnvrtc dlopens it by soname, which then resolves to the copy
    // already loaded. Then libnvrtc itself, which cudarc's later dlopen("libnvrtc.so.13") finds.
    for name in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
        let path = lib_dir.join(name);
        if !path.is_file() {
            return unavailable(format!("{} does not exist", path.display()));
        }
        // SAFETY: loading NVIDIA's NVRTC libraries runs no initialisers with preconditions.
        match unsafe { libloading::Library::new(&path) } {
            // Kept loaded for the life of the process.
            Ok(lib) => std::mem::forget(lib),
            Err(e) => return unavailable(format!("cannot load {}: {e}", path.display())),
        }
    }
    if !compile::nvrtc_present() {
        return unavailable("libnvrtc is still not loadable after the preload".to_string());
    }
    Some(ptxas)
}

/// ptxas's numbers for one kernel.
#[derive(Clone, Debug, Default)]
struct Usage {
    registers: u32,
    smem: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
}

/// The number before `unit` in `line` (e.g. `"12 bytes smem"` with unit `" bytes smem"`).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let end = line.find(unit)?;
    let digits: String = line[..end]
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

/// Parses `ptxas -v` output into per-entry usage, in order of appearance.
fn parse_ptxas(text: &str) -> Vec<(String, Usage)> {
    let mut out: Vec<(String, Usage)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push((name, Usage::default()));
            current = Some(out.len() - 1);
            continue;
        }
        if line.contains("Function properties for") {
            // Properties of a non-entry (device) function belong to no kernel row.
            let name = line.split("Function properties for ").nth(1).unwrap_or("");
            current = out.iter().position(|(n, _)| n == name.trim());
            continue;
        }
        let Some(i) = current else { continue };
        let u = &mut out[i].1;
        if line.contains("bytes stack frame") {
            u.stack = number_before(line, " bytes stack frame").unwrap_or(0);
            u.spill_stores = number_before(line, " bytes spill stores").unwrap_or(0);
            u.spill_loads = number_before(line, " bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used ") && line.contains(" registers") {
            u.registers = number_before(line, " registers").unwrap_or(0);
            u.smem = number_before(line, " bytes smem").unwrap_or(0);
        }
    }
    out
}

/// The PTX body of entry `name` (from its `.entry` line to the next entry).
fn ptx_body<'a>(ptx: &'a str, name: &str) -> Option<&'a str> {
    let start = ptx.find(&format!(".entry {name}("))?;
    let rest = &ptx[start + 1..];
    let end = rest.find(".entry ").map_or(rest.len(), |e| e + 1);
    Some(&ptx[start..start + end])
}

/// 16-byte global loads and stores in a PTX body.
fn vector_accesses(body: &str) -> (usize, usize) {
    let loads = body
        .lines()
        .filter(|l| l.contains("ld.global") && l.contains(".v4."))
        .count();
    let stores = body
        .lines()
        .filter(|l| l.contains("st.global") && l.contains(".v4."))
        .count();
    (loads, stores)
}

/// One job's rows and NVRTC log, or what went wrong.
type JobResult = Result<(Vec<Row>, String), String>;

struct Row {
    source: &'static str,
    kernel: String,
    arch: String,
    usage: Usage,
    v4: (usize, usize),
}

/// Compiles one source for one architecture and assembles it; returns rows or an error text.
fn check_one(src: &KernelSource, arch: (u32, u32), ptxas: &Path, work: &Path) -> JobResult {
    let (image, log) =
        compile::compile_with_log(src, arch, Target::Ptx).map_err(|e| e.to_string())?;
    let ptx = String::from_utf8(image).map_err(|_| format!("{}: PTX is not UTF-8", src.name))?;
    let sm = compile::arch_name(arch, Target::Cubin);
    let ptx_path = work.join(format!("{}_{sm}.ptx", src.name));
    std::fs::write(&ptx_path, &ptx).map_err(|e| format!("{}: {e}", ptx_path.display()))?;
    let cubin_path = work.join(format!("{}_{sm}.cubin", src.name));
    let out = Command::new(ptxas)
        .arg(format!("-arch={sm}"))
        .arg("-v")
        .arg(&ptx_path)
        .arg("-o")
        .arg(&cubin_path)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", ptxas.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "ptxas -arch={sm} failed on {}:\n{text}",
            ptx_path.display()
        ));
    }
    let parsed = parse_ptxas(&text);
    let mut rows = Vec::new();
    for &f in src.functions {
        let Some((_, usage)) = parsed.iter().find(|(n, _)| n == f) else {
            return Err(format!(
                "{}: kernel {f} is listed but ptxas did not report it for {sm}",
                src.name
            ));
        };
        let v4 = ptx_body(&ptx, f).map(vector_accesses).unwrap_or((0, 0));
        rows.push(Row {
            source: src.name,
            kernel: f.to_string(),
            arch: sm.clone(),
            usage: usage.clone(),
            v4,
        });
    }
    Ok((rows, log))
}

fn report_path() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("cuda-kernel-report.txt");
    }
    // The test binary lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    match exe.ancestors().nth(3) {
        Some(target) => target.join("cuda-kernel-report.txt"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/cuda-kernel-report.txt"),
    }
}

#[test]
fn every_kernel_compiles_for_every_arch_without_spills() {
    let Some(ptxas) = tools() else { return };
    let version = compile::nvrtc_version().expect("nvrtc version");
    let work = std::env::temp_dir().join(format!("prfl-cuda-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");

    let sources = cuda::sources();
    let jobs: Vec<(KernelSource, (u32, u32))> = sources
        .iter()
        .flat_map(|s| ARCHS.iter().map(move |&a| (*s, a)))
        .collect();
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<(usize, JobResult)>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(jobs.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some((src, arch)) = jobs.get(i) else {
                    break;
                };
                let r = check_one(src, *arch, &ptxas, &work);
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);

    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for (i, r) in results {
        let (src, arch) = &jobs[i];
        match r {
            Ok((rs, log)) => {
                if !log.trim().is_empty() {
                    eprintln!("NVRTC log for {} ({arch:?}):\n{}", src.name, log.trim_end());
                }
                rows.extend(rs);
            }
            Err(e) => failures.push(e),
        }
    }

    let mut table = format!(
        "CUDA kernel resource report (NVRTC {}.{} -> PTX -> ptxas -v)\n\
         {:<12} {:<26} {:<6} {:>5} {:>6} {:>6} {:>8} {:>8} {:>9}\n",
        version.0,
        version.1,
        "source",
        "kernel",
        "arch",
        "regs",
        "smem",
        "stack",
        "spill-st",
        "spill-ld",
        "v4 ld/st"
    );
    for r in &rows {
        let u = &r.usage;
        table.push_str(&format!(
            "{:<12} {:<26} {:<6} {:>5} {:>6} {:>6} {:>8} {:>8} {:>5}/{:<3}\n",
            r.source,
            r.kernel,
            r.arch,
            u.registers,
            u.smem,
            u.stack,
            u.spill_stores,
            u.spill_loads,
            r.v4.0,
            r.v4.1
        ));
        if (u.spill_stores > 0 || u.spill_loads > 0) && !SPILLS_ALLOWED.contains(&r.kernel.as_str())
        {
            failures.push(format!(
                "{} spills on {} ({} bytes stored, {} loaded)",
                r.kernel, r.arch, u.spill_stores, u.spill_loads
            ));
        }
        if MUST_VECTORISE.contains(&r.kernel.as_str()) && r.v4.0 + r.v4.1 == 0 {
            failures.push(format!(
                "{} has no 16-byte global accesses on {}",
                r.kernel, r.arch
            ));
        }
    }
    println!("{table}");
    let path = report_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&path, &table) {
        Ok(()) => println!("report written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn ptxas_report_parser_reads_every_field() {
    let text = "ptxas info    : 0 bytes gmem\n\
        ptxas info    : Compiling entry function 'axpy' for 'sm_90'\n\
        ptxas info    : Function properties for axpy\n\
        \x20   16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
        ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]\n";
    let rows = parse_ptxas(text);
    assert_eq!(rows.len(), 1);
    let u = &rows[0].1;
    assert_eq!(rows[0].0, "axpy");
    assert_eq!(
        (u.registers, u.smem, u.stack, u.spill_stores, u.spill_loads),
        (40, 2048, 16, 8, 4)
    );
    let ptx = ".visible .entry a(\n ld.global.nc.v4.f32 {%f1}, [%rd1];\n}\n.visible .entry b(\n st.global.v4.f32 [%rd2], {%f1};\n}";
    assert_eq!(vector_accesses(ptx_body(ptx, "a").unwrap()), (1, 0));
    assert_eq!(vector_accesses(ptx_body(ptx, "b").unwrap()), (0, 1));
}

/// The disk cache of compiled kernels: the first compile writes an entry, the second is served
/// from it byte for byte, and a corrupted entry is recompiled and repaired, never loaded.
#[test]
fn the_kernel_cache_serves_repeats_and_repairs_corruption() {
    use prfl::backend::cuda::kernel_cache::{compile_cached, Origin};
    if tools().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("prfl-kernel-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = cuda::layout::LAYOUT;
    let (first, o1) = compile_cached(&src, (9, 0), Target::Cubin, Some(&dir)).unwrap();
    assert_eq!(o1, Origin::Compiled);
    let (second, o2) = compile_cached(&src, (9, 0), Target::Cubin, Some(&dir)).unwrap();
    assert_eq!(o2, Origin::Cache);
    assert_eq!(first, second, "the cached image is the compiled one");
    assert_eq!(first, compile::compile(&src, (9, 0)).unwrap());
    // Another architecture is another entry.
    let (_, o3) = compile_cached(&src, (8, 0), Target::Cubin, Some(&dir)).unwrap();
    assert_eq!(o3, Origin::Compiled);

    let entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    for path in &entries {
        let mut bytes = std::fs::read(path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(path, &bytes).unwrap();
    }
    let (again, o4) = compile_cached(&src, (9, 0), Target::Cubin, Some(&dir)).unwrap();
    assert_eq!(o4, Origin::Compiled, "a corrupt entry is recompiled");
    assert_eq!(again, first);
    let (_, o5) = compile_cached(&src, (9, 0), Target::Cubin, Some(&dir)).unwrap();
    assert_eq!(o5, Origin::Cache, "and the entry is repaired");
    let _ = std::fs::remove_dir_all(&dir);
}
