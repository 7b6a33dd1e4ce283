//! Turning C arguments into Rust values: null and alignment checks, float arrays whose length
//! must match the configuration, paths, and size-aware writes of output structs. Lengths are
//! compared with what the configuration expects BEFORE a slice is formed, so a wrong length is
//! reported rather than read past.

use std::ffi::{c_char, CStr};
use std::mem::{align_of, size_of};
use std::path::PathBuf;

use super::config::{PrflConfig, CONFIG_V1_SIZE, PRFL_ABI_VERSION};
use super::status::{FfiError, PRFL_ERR_SHAPE, PRFL_ERR_VERSION};

/// Reads a caller's `PrflConfig` of any `struct_size` at least version 1's (refusing a null or
/// misaligned pointer), then checks its `abi_version`.
///
/// # Safety
/// A non-null `ptr` must point to at least `struct_size` readable bytes (the header's contract
/// for `prfl_create`).
pub unsafe fn read_config(ptr: *const PrflConfig) -> Result<PrflConfig, FfiError> {
    // SAFETY: forwarded contract; every field is an integer, float or raw pointer, for which any
    // bit pattern is valid.
    let out = unsafe { read_sized(ptr, "config", CONFIG_V1_SIZE) }?;
    if out.abi_version != PRFL_ABI_VERSION {
        return Err(FfiError::new(
            PRFL_ERR_VERSION,
            format!(
                "config abi_version is {}, this library implements ABI version {PRFL_ABI_VERSION}: \
                 rebuild against its prfl.h (and fill the config with prfl_config_default)",
                out.abi_version
            ),
        ));
    }
    Ok(out)
}

fn check_aligned<T>(ptr: *const T, what: &str) -> Result<(), FfiError> {
    if (ptr as usize) % align_of::<T>() != 0 {
        return Err(FfiError::invalid(format!(
            "`{what}` ({ptr:p}) is not aligned to {} bytes",
            align_of::<T>()
        )));
    }
    Ok(())
}

/// A float array argument that must hold exactly `expected` elements (`describe` says what
/// they are, e.g. "latent [16, 21, 60, 104]", and runs only on error: the submission path must
/// not allocate). Null is `None`.
///
/// # Safety
/// A non-null `ptr` must point to `len` readable floats that stay unchanged during the call.
pub unsafe fn floats<'a>(
    ptr: *const f32,
    len: usize,
    expected: usize,
    what: &str,
    describe: impl FnOnce() -> String,
) -> Result<Option<&'a [f32]>, FfiError> {
    if ptr.is_null() {
        return Ok(None);
    }
    if len != expected {
        return Err(FfiError::new(
            PRFL_ERR_SHAPE,
            format!(
                "`{what}_len` is {len} floats, expected {expected} ({})",
                describe()
            ),
        ));
    }
    check_aligned(ptr, what)?;
    // SAFETY: non-null, aligned, and the caller guarantees `len` readable floats (`len` equals a
    // size validated at creation to fit in memory, so `len * 4 <= isize::MAX`).
    Ok(Some(unsafe { std::slice::from_raw_parts(ptr, len) }))
}

/// Like [`floats`], but null is an error.
///
/// # Safety
/// As [`floats`].
pub unsafe fn required_floats<'a>(
    ptr: *const f32,
    len: usize,
    expected: usize,
    what: &str,
    describe: impl FnOnce() -> String,
) -> Result<&'a [f32], FfiError> {
    // SAFETY: forwarded contract.
    unsafe { floats(ptr, len, expected, what, describe) }?.ok_or_else(|| FfiError::null(what))
}

/// `count` values of `per` floats each, as one array (`count * per` must not overflow).
///
/// # Safety
/// A non-null `ptr` must point to `count * per` readable floats.
pub unsafe fn float_rows<'a>(
    ptr: *const f32,
    count: usize,
    per: usize,
    what: &str,
) -> Result<&'a [f32], FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    let n = count
        .checked_mul(per)
        .filter(|n| {
            n.checked_mul(size_of::<f32>())
                .is_some_and(|b| b <= isize::MAX as usize)
        })
        .ok_or_else(|| FfiError::invalid(format!("`{what}`: {count} x {per} floats overflow")))?;
    check_aligned(ptr, what)?;
    // SAFETY: non-null, aligned, size checked against isize::MAX, and the caller guarantees
    // `count * per` readable floats.
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

/// A writable float array of `count` elements.
///
/// # Safety
/// A non-null `ptr` must point to `count` writable floats not aliased by any other argument.
pub unsafe fn floats_mut<'a>(
    ptr: *mut f32,
    count: usize,
    what: &str,
) -> Result<&'a mut [f32], FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    check_aligned(ptr.cast_const(), what)?;
    let fits = count
        .checked_mul(size_of::<f32>())
        .is_some_and(|b| b <= isize::MAX as usize);
    if !fits {
        return Err(FfiError::invalid(format!(
            "`{what}`: {count} floats overflow"
        )));
    }
    // SAFETY: non-null, aligned, size bounded, and the caller guarantees `count` writable floats
    // that nothing else references during the call.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, count) })
}

/// A UTF-8 path argument.
///
/// # Safety
/// A non-null `ptr` must point to a NUL-terminated string.
pub unsafe fn path(ptr: *const c_char, what: &str) -> Result<PathBuf, FfiError> {
    // SAFETY: forwarded contract.
    let s = unsafe { string(ptr, what) }?.ok_or_else(|| FfiError::null(what))?;
    if s.is_empty() {
        return Err(FfiError::invalid(format!("`{what}` is an empty path")));
    }
    Ok(PathBuf::from(s))
}

/// An optional UTF-8 string argument (null is `None`).
///
/// # Safety
/// A non-null `ptr` must point to a NUL-terminated string.
pub unsafe fn string<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>, FfiError> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str()
        .map(Some)
        .map_err(|e| FfiError::invalid(format!("`{what}` is not valid UTF-8: {e}")))
}

/// A byte array argument.
///
/// # Safety
/// A non-null `ptr` must point to `len` readable bytes.
pub unsafe fn bytes<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    if len > isize::MAX as usize {
        return Err(FfiError::invalid(format!(
            "`{what}`: {len} bytes is too large"
        )));
    }
    // SAFETY: non-null, u8 needs no alignment, and the caller guarantees `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Checks an output struct's `struct_size` (its first `u32`, set by the caller) before any work
/// is done, returning the number of bytes the library may write.
///
/// # Safety
/// A non-null `out` must point to a writable struct whose first field is `struct_size`.
pub unsafe fn out_size<T>(out: *mut T, what: &str, v1_size: usize) -> Result<usize, FfiError> {
    if out.is_null() {
        return Err(FfiError::null(what));
    }
    check_aligned(out.cast_const(), what)?;
    // SAFETY: non-null, aligned, and the first field is a u32 the caller set.
    let size = unsafe { out.cast::<u32>().read() } as usize;
    if size < v1_size {
        return Err(FfiError::new(
            PRFL_ERR_VERSION,
            format!(
                "`{what}->struct_size` is {size}; set it to sizeof the struct (at least \
                 {v1_size} bytes in ABI version 1)"
            ),
        ));
    }
    Ok(size.min(size_of::<T>()))
}

/// Writes the first `n` bytes of `value` (from [`out_size`]) to `out`, with `struct_size` = `n`.
///
/// # Safety
/// `out` must be valid for `n` bytes of writes, `n <= size_of::<T>()`, and `T` must start with
/// a `u32` `struct_size` field.
pub unsafe fn write_sized<T: Copy>(out: *mut T, mut value: T, n: usize) {
    // SAFETY: T starts with a u32 `struct_size` (the caller's contract); `value` is a local.
    unsafe { (&mut value as *mut T).cast::<u32>().write(n as u32) };
    // SAFETY: `out` is valid for `n` bytes and `value` has size_of::<T>() >= n; distinct memory.
    unsafe {
        std::ptr::copy_nonoverlapping((&value as *const T).cast::<u8>(), out.cast::<u8>(), n)
    };
}

/// Writes a plain value through an output pointer.
///
/// # Safety
/// A non-null `out` must be valid for a write of `T`.
pub unsafe fn write<T>(out: *mut T, value: T, what: &str) -> Result<(), FfiError> {
    if out.is_null() {
        return Err(FfiError::null(what));
    }
    check_aligned(out.cast_const(), what)?;
    // SAFETY: non-null, aligned, and writable per the contract.
    unsafe { out.write(value) };
    Ok(())
}

/// Reads an input struct whose first field is `struct_size`: the caller's bytes up to the
/// fields this library knows, the rest from `T::default()` (fields appended later). A size below
/// `v1_size` is `PRFL_ERR_VERSION`.
///
/// # Safety
/// A non-null `ptr` must point to at least `struct_size` readable bytes, and every field of `T`
/// must accept any bit pattern (integers and floats).
pub unsafe fn read_sized<T: Copy + Default>(
    ptr: *const T,
    what: &str,
    v1_size: usize,
) -> Result<T, FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    check_aligned(ptr, what)?;
    // SAFETY: non-null, aligned, and the first field is a u32 the caller set.
    let size = unsafe { ptr.cast::<u32>().read() } as usize;
    if size < v1_size {
        return Err(FfiError::new(
            PRFL_ERR_VERSION,
            format!(
                "`{what}->struct_size` is {size}; set it to sizeof the struct (at least \
                 {v1_size} bytes in ABI version 1)"
            ),
        ));
    }
    let mut out = T::default();
    let n = size.min(size_of::<T>());
    // SAFETY: the caller's struct has at least `size >= n` readable bytes; `out` has
    // size_of::<T>() >= n; distinct memory; any bit pattern is a valid field (the contract).
    unsafe {
        std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), (&mut out as *mut T).cast::<u8>(), n)
    };
    Ok(out)
}

/// A writable array of `count` `u32` (indices).
///
/// # Safety
/// A non-null `ptr` must point to `count` writable `u32` not aliased by any other argument.
pub unsafe fn u32s_mut<'a>(
    ptr: *mut u32,
    count: usize,
    what: &str,
) -> Result<&'a mut [u32], FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    check_aligned(ptr.cast_const(), what)?;
    let fits = count
        .checked_mul(size_of::<u32>())
        .is_some_and(|b| b <= isize::MAX as usize);
    if !fits {
        return Err(FfiError::invalid(format!(
            "`{what}`: {count} indices overflow"
        )));
    }
    // SAFETY: non-null, aligned, size bounded, and the caller guarantees `count` writable values
    // that nothing else references during the call.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, count) })
}

#[cfg(test)]
mod tests {
    //! The configuration as C passes it: read struct-size aware, then validated.
    use std::mem::size_of;

    use super::read_config;
    use crate::backend::device::DeviceSpec;
    use crate::ffi::config::{validate as validate_with, PrflConfig, PrflDevice, CONFIG_V1_SIZE};
    use crate::ffi::status::*;
    use crate::session::SessionConfig;

    #[test]
    fn default_validates() {
        let c = validate(&PrflConfig::default()).unwrap();
        assert_eq!(c.sizes.latent, 16 * 21 * 60 * 104);
        assert_eq!(c.sizes.text, 512 * 4096);
    }

    fn validate(c: &PrflConfig) -> Result<SessionConfig, FfiError> {
        // SAFETY: the tests' library folders are NULL or NUL-terminated literals.
        let dir = unsafe { crate::ffi::args::string(c.cuda_library_dir, "cuda_library_dir") }?;
        validate_with(c, dir)
    }

    #[test]
    fn devices_validate() {
        let cfg = |device: PrflDevice, index: i32| PrflConfig {
            device: device as i32,
            device_index: index,
            ..PrflConfig::default()
        };
        use PrflDevice::*;
        assert_eq!(
            validate(&cfg(PRFL_DEVICE_CPU, 0)).unwrap().device,
            DeviceSpec::Cpu
        );
        assert_eq!(
            validate(&cfg(PRFL_DEVICE_AUTO, 0)).unwrap().device,
            DeviceSpec::Auto
        );
        assert_eq!(
            validate(&cfg(PRFL_DEVICE_CUDA, 2)).unwrap().device,
            DeviceSpec::Cuda(2)
        );
        for bad in [
            cfg(PRFL_DEVICE_CPU, 1),
            cfg(PRFL_DEVICE_AUTO, 1),
            cfg(PRFL_DEVICE_CUDA, -1),
        ] {
            let e = validate(&bad).unwrap_err();
            assert!(e.message.contains("device_index"), "{}", e.message);
        }
        let e = validate(&PrflConfig {
            cpu_fallback: 2,
            ..PrflConfig::default()
        })
        .unwrap_err();
        assert!(e.message.contains("cpu_fallback"), "{}", e.message);
        let dir = c"/opt/cuda/lib";
        let c = validate(&PrflConfig {
            cuda_library_dir: dir.as_ptr(),
            cpu_fallback: 1,
            ..PrflConfig::default()
        })
        .unwrap();
        assert_eq!(
            c.cuda.lib_dir.as_deref(),
            Some(std::path::Path::new("/opt/cuda/lib"))
        );
        assert!(c.cpu_fallback);
        let empty = c"";
        let c = validate(&PrflConfig {
            cuda_library_dir: empty.as_ptr(),
            ..PrflConfig::default()
        })
        .unwrap();
        assert_eq!(c.cuda.lib_dir, None);
        assert!(!c.cpu_fallback);
    }

    #[test]
    fn a_version_1_struct_gets_the_appended_fields_defaults() {
        // A caller compiled before `cpu_fallback` existed: its struct ends where it starts.
        let mut c = PrflConfig {
            cpu_fallback: 1,
            ..PrflConfig::default()
        };
        c.struct_size = CONFIG_V1_SIZE as u32;
        assert!(CONFIG_V1_SIZE < size_of::<PrflConfig>());
        let got = unsafe { read_config(&c) }.unwrap();
        assert_eq!(got.cpu_fallback, 0);
        assert_eq!(got.seed, c.seed);
    }

    #[test]
    fn struct_size_prefix_is_read_and_small_sizes_refused() {
        // A newer caller: a bigger struct whose unknown tail is ignored.
        #[repr(C)]
        struct Newer {
            base: PrflConfig,
            extra: u64,
        }
        let mut newer = Newer {
            base: PrflConfig {
                batch_size: 3,
                ..PrflConfig::default()
            },
            extra: u64::MAX,
        };
        newer.base.struct_size = size_of::<Newer>() as u32;
        let got = unsafe { read_config(&newer.base) }.unwrap();
        assert_eq!(got.batch_size, 3);
        let old = PrflConfig {
            struct_size: 16,
            ..PrflConfig::default()
        };
        assert_eq!(
            unsafe { read_config(&old) }.unwrap_err().status,
            PRFL_ERR_VERSION
        );
        let wrong = PrflConfig {
            abi_version: 2,
            ..PrflConfig::default()
        };
        assert_eq!(
            unsafe { read_config(&wrong) }.unwrap_err().status,
            PRFL_ERR_VERSION
        );
    }
}
