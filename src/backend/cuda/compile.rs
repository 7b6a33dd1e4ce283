//! Run-time compilation of the kernel sources with NVRTC.
//!
//! [`compile`] turns a [`KernelSource`] into a CUBIN for one real architecture (`sm_XY`), so
//! that the driver loads machine code and JIT-compiles nothing; [`compile_ptx`] produces PTX for
//! the virtual architecture (`compute_XY`), which the CI check feeds to `ptxas -v` and which
//! [`super::module::Kernels::load`] falls back to for a GPU newer than this NVRTC knows.
//!
//! cudarc loads `libnvrtc` lazily and panics when it is missing: every entry point here checks
//! for the library first ([`nvrtc_present`]) and runs the NVRTC calls under `catch_unwind`, so a
//! missing or broken library is a [`CompileError`], never a panic.

use std::ffi::{c_char, c_int, CString};
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::nvrtc::{result, sys};

use super::types::KernelSource;

/// What NVRTC should produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Machine code for the real architecture `sm_XY`.
    Cubin,
    /// PTX for the virtual architecture `compute_XY`.
    Ptx,
}

/// Why a kernel source could not be compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompileError {
    /// `libnvrtc` (CUDA 13) cannot be loaded.
    NvrtcMissing,
    /// A call into NVRTC failed outside compilation proper (or panicked inside cudarc).
    Nvrtc {
        source: String,
        call: &'static str,
        reason: String,
    },
    /// The compiler rejected the source; `log` is NVRTC's log.
    Compile {
        source: String,
        arch: String,
        options: Vec<String>,
        reason: String,
        log: String,
    },
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompileError::NvrtcMissing => write!(
                f,
                "NVRTC (libnvrtc.so.13) cannot be loaded: install the CUDA 13 NVRTC library \
                 (e.g. the nvidia-cuda-nvrtc wheel) and put its folder on the library path"
            ),
            CompileError::Nvrtc {
                source,
                call,
                reason,
            } => write!(f, "{source}: {call} failed: {reason}"),
            CompileError::Compile {
                source,
                arch,
                options,
                reason,
                log,
            } => write!(
                f,
                "{source} does not compile for {arch} ({reason}; options {}):\n{}",
                options.join(" "),
                log.trim_end()
            ),
        }
    }
}

impl std::error::Error for CompileError {}

/// Set once `libnvrtc` was found; a failed probe is retried (a later preload may fix it).
static NVRTC_FOUND: AtomicBool = AtomicBool::new(false);

/// Whether cudarc can load `libnvrtc` (by the names it searches, or because a library with
/// that soname is already loaded). Never panics.
pub fn nvrtc_present() -> bool {
    if NVRTC_FOUND.load(Ordering::Relaxed) {
        return true;
    }
    // SAFETY: only tries to dlopen the library by its candidate names.
    let found = std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
    if found {
        NVRTC_FOUND.store(true, Ordering::Relaxed);
    }
    found
}

/// Runs `f` (NVRTC calls through cudarc) after the library probe, turning a panic into an
/// error.
fn guarded<T>(
    source: &str,
    call: &'static str,
    f: impl FnOnce() -> Result<T, CompileError>,
) -> Result<T, CompileError> {
    if !nvrtc_present() {
        return Err(CompileError::NvrtcMissing);
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(CompileError::Nvrtc {
            source: source.to_string(),
            call,
            reason: format!("panicked: {}", crate::error::panic_message(&*payload)),
        }),
    }
}

fn nvrtc_err(source: &str, call: &'static str, e: result::NvrtcError) -> CompileError {
    CompileError::Nvrtc {
        source: source.to_string(),
        call,
        reason: format!("{:?}", e.0),
    }
}

/// NVRTC's version, e.g. `(13, 0)`.
pub fn nvrtc_version() -> Result<(u32, u32), CompileError> {
    guarded("nvrtc", "nvrtcVersion", || {
        let (mut major, mut minor): (c_int, c_int) = (0, 0);
        // SAFETY: two valid out-pointers.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| nvrtc_err("nvrtc", "nvrtcVersion", e))?;
        Ok((major as u32, minor as u32))
    })
}

/// The real architectures this NVRTC can compile for, as `(major, minor)`, ascending.
pub fn supported_archs() -> Result<Vec<(u32, u32)>, CompileError> {
    guarded("nvrtc", "nvrtcGetSupportedArchs", || {
        let mut n: c_int = 0;
        // SAFETY: valid out-pointer; then a buffer of exactly `n` ints.
        unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }
            .result()
            .map_err(|e| nvrtc_err("nvrtc", "nvrtcGetNumSupportedArchs", e))?;
        let mut archs = vec![0 as c_int; n.max(0) as usize];
        if !archs.is_empty() {
            unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
                .result()
                .map_err(|e| nvrtc_err("nvrtc", "nvrtcGetSupportedArchs", e))?;
        }
        let mut out: Vec<(u32, u32)> = archs
            .iter()
            .map(|&a| ((a / 10) as u32, (a % 10) as u32))
            .collect();
        out.sort_unstable();
        Ok(out)
    })
}

/// `sm_90` / `compute_90` for `(9, 0)`.
pub fn arch_name(arch: (u32, u32), target: Target) -> String {
    let prefix = match target {
        Target::Cubin => "sm",
        Target::Ptx => "compute",
    };
    format!("{prefix}_{}{}", arch.0, arch.1)
}

/// The NVRTC options every source is compiled with. No fast math: the kernels rely on IEEE
/// division and square roots and on their own explicit rounding (`__fmul_rn`, ...) where they
/// match the CPU backend bit for bit; FMA contraction elsewhere is NVRTC's default.
pub fn options(arch: (u32, u32), target: Target) -> Vec<String> {
    vec![
        format!("--gpu-architecture={}", arch_name(arch, target)),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
        "-lineinfo".to_string(),
        "--fmad=true".to_string(),
        // "declared but never referenced" for the shared helpers a source does not use.
        "--diag-suppress=177".to_string(),
    ]
}

/// Frees the program however compilation ends.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by `create_program` and destroyed only here. An error while freeing
        // is ignored (nothing useful can be done with it).
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

fn log_text(prog: &Program) -> String {
    // SAFETY: a live program.
    match unsafe { result::get_program_log(prog.0) } {
        Ok(raw) => {
            let bytes: Vec<u8> = raw
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(e) => format!("(no log: {:?})", e.0),
    }
}

/// The compiled image (CUBIN bytes or PTX text) and NVRTC's log (warnings).
pub fn compile_with_log(
    src: &KernelSource,
    arch: (u32, u32),
    target: Target,
) -> Result<(Vec<u8>, String), CompileError> {
    let name = format!("{}.cu", src.name);
    guarded(&name, "nvrtcCompileProgram", || {
        let code = CString::new(src.code).map_err(|_| CompileError::Nvrtc {
            source: name.clone(),
            call: "nvrtcCreateProgram",
            reason: "the source contains a NUL byte".to_string(),
        })?;
        let cname = CString::new(name.clone()).expect("source names have no NUL");
        let prog = Program(
            result::create_program(&code, Some(&cname))
                .map_err(|e| nvrtc_err(&name, "nvrtcCreateProgram", e))?,
        );
        let opts = options(arch, target);
        // SAFETY: a live program; the options are plain strings.
        if let Err(e) = unsafe { result::compile_program(prog.0, &opts) } {
            return Err(CompileError::Compile {
                source: name.clone(),
                arch: arch_name(arch, target),
                options: opts,
                reason: format!("{:?}", e.0),
                log: log_text(&prog),
            });
        }
        let log = log_text(&prog);
        let image = match target {
            Target::Ptx => {
                // SAFETY: a compiled program.
                let raw = unsafe { result::get_ptx(prog.0) }
                    .map_err(|e| nvrtc_err(&name, "nvrtcGetPTX", e))?;
                raw.iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as u8)
                    .collect()
            }
            Target::Cubin => get_cubin(&prog).map_err(|e| nvrtc_err(&name, "nvrtcGetCUBIN", e))?,
        };
        Ok((image, log))
    })
}

fn get_cubin(prog: &Program) -> Result<Vec<u8>, result::NvrtcError> {
    let mut size: usize = 0;
    // SAFETY: a compiled program; the buffer has exactly the reported size.
    unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }.result()?;
    let mut buf = vec![0u8; size];
    unsafe { sys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr() as *mut c_char) }.result()?;
    Ok(buf)
}

/// Compiles `src` to a CUBIN for the real architecture `arch` (e.g. `(9, 0)` for `sm_90`).
pub fn compile(src: &KernelSource, arch: (u32, u32)) -> Result<Vec<u8>, CompileError> {
    compile_with_log(src, arch, Target::Cubin).map(|(image, _)| image)
}

/// Compiles `src` to PTX for the virtual architecture `compute_XY`.
pub fn compile_ptx(src: &KernelSource, arch: (u32, u32)) -> Result<String, CompileError> {
    let (image, _) = compile_with_log(src, arch, Target::Ptx)?;
    String::from_utf8(image).map_err(|_| CompileError::Nvrtc {
        source: format!("{}.cu", src.name),
        call: "nvrtcGetPTX",
        reason: "the PTX is not UTF-8".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_the_architecture() {
        let o = options((9, 0), Target::Cubin);
        assert_eq!(o[0], "--gpu-architecture=sm_90");
        assert_eq!(
            options((8, 9), Target::Ptx)[0],
            "--gpu-architecture=compute_89"
        );
        assert!(o.iter().all(|s| !s.contains("fast-math")));
    }
}
