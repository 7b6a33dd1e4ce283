//! `--device`, `--cuda-lib-dir` and `--cpu-fallback`, shared by every command that builds a
//! model, and `prfl devices`.

use std::path::PathBuf;

use prfl::backend::cuda::{self, CudaOptions};
use prfl::backend::device::{Device, DeviceSpec};

#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where to compute: `cpu`, `cuda` (= `cuda:0`), `cuda:N`, or `auto` (the first GPU when the
    /// CUDA driver and libraries are usable, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// A folder holding the CUDA libraries (libcuda, libnvrtc, libcublas, libcublasLt), loaded
    /// from there before the system's search path.
    #[arg(long)]
    pub cuda_lib_dir: Option<PathBuf>,
    /// With `--device cuda:N`: compute on the CPU (with a warning) when the GPU cannot be used,
    /// instead of failing.
    #[arg(long)]
    pub cpu_fallback: bool,
}

impl DeviceArgs {
    pub fn options(&self) -> CudaOptions {
        CudaOptions {
            lib_dir: self.cuda_lib_dir.clone(),
        }
    }

    /// Opens the device (never panics; an unusable GPU is an error naming the reason).
    pub fn open(&self) -> Result<Device, String> {
        Device::open(self.device, &self.options(), self.cpu_fallback)
            .map_err(|e| format!("--device {}: {e}", self.device))
    }
}

#[derive(clap::Args, Debug)]
pub struct DevicesArgs {
    /// A folder holding the CUDA libraries (as for the other commands).
    #[arg(long)]
    pub cuda_lib_dir: Option<PathBuf>,
}

/// `prfl devices`: the CPU, the CUDA libraries found, and every CUDA device.
pub fn devices(a: &DevicesArgs) -> Result<(), String> {
    let opts = CudaOptions {
        lib_dir: a.cuda_lib_dir.clone(),
    };
    println!(
        "cpu      {}",
        prfl::backend::Backend::name(&prfl::backend::cpu::Cpu)
    );
    match cuda::library_report(&opts) {
        Ok(libs) => {
            for l in libs {
                println!("library  {:<24} {}", l.library, library_state(&l));
            }
        }
        Err(e) => println!("library  error: {e}"),
    }
    if let Ok((major, minor)) = cuda::probe::driver_version(&opts) {
        println!("driver   CUDA {major}.{minor}");
    }
    match cuda::probe(&opts) {
        Ok(devices) => {
            for d in devices {
                println!("device   {d}");
            }
        }
        Err(e) => println!("cuda     unavailable: {e}"),
    }
    Ok(())
}

/// One library's line of `prfl devices`: its version and the file in use, and whether that is
/// the folder's copy.
fn library_state(l: &cuda::LibraryStatus) -> String {
    if !l.found {
        return match &l.preloaded {
            Some(p) => format!(
                "loaded from {}, but not found by name afterwards (not a CUDA 13 build?)",
                p.display()
            ),
            None => "NOT FOUND".to_string(),
        };
    }
    let version = l.version.as_deref().unwrap_or("version unknown");
    let file = l
        .loaded_from
        .as_ref()
        .map_or("an unknown file".to_string(), |p| p.display().to_string());
    let origin = match (l.uses_folder_copy(), &l.preloaded) {
        (Some(true), _) => " (the library folder's)".to_string(),
        (Some(false), Some(p)) => format!(" (NOT the library folder's {})", p.display()),
        _ => String::new(),
    };
    format!("{version}, {file}{origin}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        device: DeviceArgs,
    }

    #[test]
    fn device_flags_parse() {
        let a = Cli::try_parse_from(["prfl"]).unwrap().device;
        assert_eq!(a.device, DeviceSpec::Auto);
        assert_eq!(a.cuda_lib_dir, None);
        assert!(!a.cpu_fallback);
        let a = Cli::try_parse_from([
            "prfl",
            "--device",
            "cuda:1",
            "--cuda-lib-dir",
            "/opt/cuda/lib",
            "--cpu-fallback",
        ])
        .unwrap()
        .device;
        assert_eq!(a.device, DeviceSpec::Cuda(1));
        assert_eq!(a.options().lib_dir, Some(PathBuf::from("/opt/cuda/lib")));
        assert!(a.cpu_fallback);
        assert!(Cli::try_parse_from(["prfl", "--device", "tpu"]).is_err());
        // The CPU always opens; `auto` opens whatever this machine has, without panicking.
        let cpu = Cli::try_parse_from(["prfl", "--device", "cpu"])
            .unwrap()
            .device;
        assert!(!cpu.open().unwrap().is_cuda());
        let auto = Cli::try_parse_from(["prfl"]).unwrap().device;
        assert!(auto.open().is_ok());
    }
}
