//! The one safetensors layer of the crate: parsing a file's header over either a memory-mapped
//! file or bytes the caller owns, reading its tensors, and writing files atomically.
//!
//! Everything that reads safetensors (model checkpoints, training checkpoints, LoRA adapters,
//! reward datasets, the CLI's input files, and checkpoints handed over as bytes by a host) goes
//! through [`Safetensors`], so a damaged file gives the same error from every reader and from
//! either source: there is one mapping of header errors to [`Error`] and one map between the
//! format's dtypes and [`DType`]. The shape follows candle's `candle-core/src/safetensors.rs`
//! (one API over mapped, borrowed and owned bytes); only the two sources prfl needs exist here.
//!
//! Only the header is parsed on open, so opening a mapped 57 GB checkpoint is instant and reading
//! a subset of its tensors touches only their pages.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ::safetensors::tensor::{Dtype as StDtype, Metadata, SafeTensors};
use ::safetensors::SafeTensorError;
use memmap2::Mmap;
use serde_json::{json, Value};

use crate::tensor::{DType, HostTensor, Storage};
use crate::{Error, Result};

/// The name that errors give a file parsed from memory (where a mapped file has its path).
pub const MEMORY_SOURCE: &str = "<memory>";

/// The bytes of a safetensors file: mapped read-only from disk, or owned. Everything after the
/// source is chosen reads them as one `&[u8]`, so both sources share every check.
enum Bytes {
    /// A read-only map of a file. Files are replaced by rename, never rewritten in place (see
    /// [`atomic_write`]), so the mapped bytes do not change underneath.
    Mapped(Mmap),
    /// Bytes handed over by the caller (a host's packed asset, a test's buffer).
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One tensor as its header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// The name in the file.
    pub name: String,
    /// The element type, or `None` for a type the engine cannot hold (see
    /// [`TensorEntry::stored_dtype`] and [`Safetensors::dtype`]).
    pub dtype: Option<DType>,
    /// The element type as the format names it (`F32`, `BF16`, `I64`, ...).
    pub stored_dtype: String,
    pub shape: Vec<usize>,
    /// Where the tensor's bytes lie, as absolute positions in the file.
    pub range: Range<usize>,
}

impl TensorEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed safetensors file: its header entries and user metadata, over its bytes.
pub struct Safetensors {
    source: PathBuf,
    bytes: Bytes,
    /// In file order (ascending offsets).
    tensors: Vec<TensorEntry>,
    by_name: HashMap<String, usize>,
    metadata: HashMap<String, String>,
}

impl std::fmt::Debug for Safetensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Safetensors")
            .field("source", &self.source)
            .field("bytes", &self.bytes.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Safetensors {
    /// Maps a file and parses (and validates) its header; tensor bytes are not touched.
    pub fn map(path: &Path) -> Result<Safetensors> {
        let file = crate::fs::open_regular(path)?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 8 {
            // Checked before mapping: some platforms refuse to map an empty file.
            return Err(Error::checkpoint(path, too_short(len)));
        }
        // SAFETY: the map is read-only; the file must not be modified while open, the usual
        // contract of memory-mapped checkpoints (writers here replace files by rename, never in
        // place).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path.to_path_buf(), Bytes::Mapped(mmap))
    }

    /// Parses a whole safetensors file held in memory; errors name it [`MEMORY_SOURCE`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Safetensors> {
        Self::parse(PathBuf::from(MEMORY_SOURCE), Bytes::Owned(bytes))
    }

    fn parse(source: PathBuf, bytes: Bytes) -> Result<Safetensors> {
        let (header_len, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::checkpoint(&source, header_error(&bytes, e)))?;
        let data_start = 8 + header_len;
        let mut tensors: Vec<TensorEntry> = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| TensorEntry {
                name,
                dtype: from_stored(info.dtype),
                stored_dtype: format!("{:?}", info.dtype),
                shape: info.shape.clone(),
                range: data_start + info.data_offsets.0..data_start + info.data_offsets.1,
            })
            .collect();
        // Names break ties between empty tensors, so the order is the same on every run.
        tensors.sort_by(|a, b| {
            (a.range.start, a.range.end, &a.name).cmp(&(b.range.start, b.range.end, &b.name))
        });
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(Safetensors {
            source,
            bytes,
            tensors,
            by_name,
            metadata,
        })
    }

    /// What errors call this file: its path, or [`MEMORY_SOURCE`].
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The path of a mapped file (`None` for bytes from memory).
    pub fn path(&self) -> Option<&Path> {
        match self.bytes {
            Bytes::Mapped(_) => Some(&self.source),
            Bytes::Owned(_) => None,
        }
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// The tensor named `name`, if present.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The header's `__metadata__` string map (empty when it has none).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// The element type of a tensor, or the error that names a type the engine cannot hold.
    pub fn dtype(&self, entry: &TensorEntry) -> Result<DType> {
        entry.dtype.ok_or_else(|| {
            Error::UnsupportedDtype(format!(
                "{} of tensor `{}` in {} (expected F32, BF16 or F16)",
                entry.stored_dtype,
                entry.name,
                self.source.display()
            ))
        })
    }

    /// The raw (little-endian) bytes of a tensor.
    pub fn data(&self, entry: &TensorEntry) -> Result<&[u8]> {
        // The header check makes the offsets tile the data section; an entry from another
        // file is caught here rather than sliced out of bounds.
        self.bytes.get(entry.range.clone()).ok_or_else(|| {
            Error::checkpoint(
                &self.source,
                format!("tensor `{}` lies outside the file", entry.name),
            )
        })
    }

    /// Reads one tensor in its stored dtype.
    pub fn read_entry(&self, entry: &TensorEntry) -> Result<HostTensor> {
        let dtype = self.dtype(entry)?;
        let data = Storage::from_le_bytes(self.data(entry)?, dtype);
        HostTensor::new(entry.shape.clone(), data)
    }

    /// Reads the tensor named `name` in its stored dtype.
    pub fn read(&self, name: &str) -> Result<HostTensor> {
        let entry = self
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        self.read_entry(entry)
    }

    /// Reads every tensor (any names; F32, BF16 or F16), keyed by name.
    pub fn read_all(&self) -> Result<BTreeMap<String, HostTensor>> {
        self.tensors
            .iter()
            .map(|e| Ok((e.name.clone(), self.read_entry(e)?)))
            .collect()
    }
}

/// The message for a file too short to hold the 8-byte header length.
fn too_short(len: u64) -> String {
    format!("truncated: {len} bytes, shorter than a safetensors header")
}

/// The one mapping of header errors to messages, shared by every reader and both sources.
fn header_error(bytes: &[u8], e: SafeTensorError) -> String {
    use SafeTensorError as E;
    let len = bytes.len();
    // The declared header length; `read_metadata` only fails after reading it when len >= 8.
    let header_len = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    let header_text = || {
        let end = usize::try_from(header_len).ok()?.checked_add(8)?;
        std::str::from_utf8(bytes.get(8..end)?).ok()
    };
    match e {
        E::HeaderTooSmall => too_short(len as u64),
        E::InvalidHeaderLength => format!(
            "truncated: the header claims {header_len} bytes but only {} follow its length",
            len - 8
        ),
        E::MetadataIncompleteBuffer => {
            // `header_text` is only `Some` when the header lies inside the file.
            let data_start = 8 + header_len as usize;
            match header_text().and_then(declared_data_end) {
                Some(end) if data_start.saturating_add(end) > len => format!(
                    "truncated: the header places tensor data up to byte {}, past the end of \
                     the {len}-byte file",
                    data_start.saturating_add(end)
                ),
                Some(end) => format!(
                    "corrupt: {} bytes follow the last tensor's data",
                    len - (data_start + end)
                ),
                None => "truncated or corrupt: the header and the tensor data do not cover the \
                         file exactly"
                    .to_string(),
            }
        }
        E::HeaderTooLarge | E::InvalidHeader | E::InvalidHeaderStart => {
            "corrupt or not a safetensors file: unreadable header".to_string()
        }
        E::InvalidHeaderDeserialization => {
            // The crate drops serde's reason (an unknown dtype, a missing field): recover it.
            match header_text().map(serde_json::from_str::<Metadata>) {
                Some(Err(why)) => {
                    format!("corrupt or not a safetensors file: unreadable header ({why})")
                }
                _ => "corrupt or not a safetensors file: unreadable header".to_string(),
            }
        }
        E::InvalidOffset(name) => format!(
            "corrupt header: the data offsets of tensor `{name}` do not follow the previous \
             tensor's"
        ),
        E::TensorInvalidInfo => {
            "corrupt header: a tensor's data offsets do not match its shape and dtype".to_string()
        }
        E::ValidationOverflow => "corrupt header: a tensor's size overflows".to_string(),
        other => format!("corrupt safetensors header: {other:?}"),
    }
}

/// The end of the data section a header declares (the largest end offset), if it parses.
fn declared_data_end(header: &str) -> Option<usize> {
    let v: Value = serde_json::from_str(header).ok()?;
    v.as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .map(|(_, t)| {
            t.get("data_offsets")?
                .get(1)?
                .as_u64()
                .and_then(|e| usize::try_from(e).ok())
        })
        .try_fold(0usize, |m, e| Some(m.max(e?)))
}

/// The one map from the format's dtypes to the engine's (`None`: one it cannot hold).
fn from_stored(d: StDtype) -> Option<DType> {
    match d {
        StDtype::F32 => Some(DType::F32),
        StDtype::BF16 => Some(DType::BF16),
        StDtype::F16 => Some(DType::F16),
        _ => None,
    }
}

/// The format's name of an engine dtype, as written in headers.
fn stored_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
    }
}

/// The `__metadata__` string map of a safetensors file (empty when it has none).
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    Ok(Safetensors::map(path)?.metadata)
}

/// Reads every tensor of a safetensors file (any names; F32, BF16 or F16).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    Safetensors::map(path)?.read_all()
}

/// Writes tensors to a safetensors file atomically (a crash leaves the old file or none, never a
/// partial one). `metadata` goes to the header's `__metadata__`.
pub fn write_safetensors<'a, K: AsRef<str>>(
    path: &Path,
    tensors: impl IntoIterator<Item = (K, &'a HostTensor)>,
    metadata: Option<&HashMap<String, String>>,
) -> Result<()> {
    let mut list: Vec<(String, &HostTensor)> = tensors
        .into_iter()
        .map(|(k, t)| (k.as_ref().to_string(), t))
        .collect();
    // Descending element size, then name, as the reference writer does: every tensor then starts
    // at an offset aligned to its element size.
    list.sort_by(|(a, x), (b, y)| {
        y.dtype()
            .size_in_bytes()
            .cmp(&x.dtype().size_in_bytes())
            .then_with(|| a.cmp(b))
    });
    if let Some(w) = list.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::InvalidInput(format!(
            "tensor `{}` given twice",
            w[0].0
        )));
    }
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), json!(m));
    }
    let mut offset = 0usize;
    for (name, t) in &list {
        if name == "__metadata__" {
            return Err(Error::InvalidInput(
                "`__metadata__` is reserved in safetensors".into(),
            ));
        }
        if t.numel() != t.data.len() {
            return Err(Error::InvalidInput(format!(
                "tensor `{name}`: shape {:?} does not match its {} elements",
                t.shape,
                t.data.len()
            )));
        }
        let n = t.data.len() * t.dtype().size_in_bytes();
        header.insert(
            name.clone(),
            json!({
                "dtype": stored_name(t.dtype()),
                "shape": t.shape,
                "data_offsets": [offset, offset + n],
            }),
        );
        offset += n;
    }
    let mut header = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::InvalidInput(format!("safetensors header: {e}")))?;
    // The data must start 8-byte aligned; the format pads the header with spaces.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    atomic_write(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (_, t) in &list {
            w.write_all(&t.data.le_bytes())?;
        }
        Ok(())
    })
}

/// Writes a file through a temporary in the same directory, fsyncs it, renames it over `path`,
/// and fsyncs the directory, so the file is either entirely old or entirely new after a crash.
pub fn atomic_write(
    path: &Path,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        body(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Distinguishes the temporaries of concurrent writes from one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The target file name and the writing process of a temporary [`atomic_write`] names
/// `.<target>.tmp-<pid>-<n>`, or `None` for any other name.
pub fn parse_temporary(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix('.')?;
    let (target, tail) = rest.rsplit_once(".tmp-")?;
    let (pid, n) = tail.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if target.is_empty() || !digits(pid) || !digits(n) {
        return None;
    }
    Some((target, pid.parse().ok()?))
}

/// Removes the temporaries [`atomic_write`] left in `dir` for target names `is_target`
/// accepts, when the process that wrote them no longer runs (a write killed midway; on
/// platforms where that cannot be asked, when they are over an hour old). Nothing else is
/// touched: only names of exactly our temporary pattern, and only for the caller's targets.
/// Best effort (a file that cannot be removed is logged and left); returns how many went.
pub fn remove_stale_temporaries(dir: &Path, is_target: impl Fn(&str) -> bool) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((target, pid)) = parse_temporary(&name) else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || !is_target(target) || !writer_gone(pid, &entry) {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => {
                ::log::info!("removed the stale temporary {}", entry.path().display());
                removed += 1;
            }
            Err(e) => ::log::warn!("could not remove {}: {e}", entry.path().display()),
        }
    }
    removed
}

/// Whether the process that wrote a temporary has ended (so its write never completes).
#[cfg(unix)]
fn writer_gone(pid: u32, _entry: &fs::DirEntry) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true; // no process can have this id
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    !alive
}

/// Whether the process that wrote a temporary has ended: without a way to ask, a temporary
/// untouched for an hour is taken as abandoned.
#[cfg(not(unix))]
fn writer_gone(_pid: u32, entry: &fs::DirEntry) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > std::time::Duration::from_secs(3600))
}

/// Makes a rename durable (a no-op where directories cannot be opened, e.g. Windows).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_are_recognised_by_their_exact_pattern() {
        assert_eq!(
            parse_temporary(".prfl-runtime.safetensors.tmp-123-4"),
            Some(("prfl-runtime.safetensors", 123))
        );
        assert_eq!(parse_temporary(".a.tmp-b.tmp-7-0"), Some(("a.tmp-b", 7)));
        for other in [
            "prfl-runtime.safetensors.tmp-1-2",
            ".prfl-runtime.safetensors.tmp-1",
            ".prfl-runtime.safetensors.tmp-1-",
            ".prfl-runtime.safetensors.tmp-x-2",
            ".prfl-runtime.safetensors.tmp-1-2-3",
            "..tmp-1-2",
            ".notes.txt",
        ] {
            assert_eq!(parse_temporary(other), None, "{other}");
        }
    }

    /// A tiny two-tensor file with metadata, as bytes.
    fn sample() -> (Vec<u8>, HostTensor, HostTensor) {
        // One directory per call: tests run in parallel.
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "prfl-st-sample-{}-{}",
            std::process::id(),
            CALLS.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.safetensors");
        let a = HostTensor::new(vec![3], Storage::from_f32(&[1.0, 2.0, 3.0], DType::BF16)).unwrap();
        let b = HostTensor::from_f32(vec![2, 1], vec![4.0, 5.0]).unwrap();
        let m: HashMap<String, String> = [("k".to_string(), "v".to_string())].into();
        write_safetensors(&path, [("a", &a), ("b", &b)], Some(&m)).unwrap();
        let bytes = fs::read(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        (bytes, a, b)
    }

    #[test]
    fn round_trip_and_alignment() {
        let dir = std::env::temp_dir().join(format!("prfl-st-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.safetensors");
        let a = HostTensor::new(vec![3], Storage::from_f32(&[1.0, 2.0, 3.0], DType::BF16)).unwrap();
        let b = HostTensor::from_f32(vec![2, 1], vec![4.0, 5.0]).unwrap();
        let m: HashMap<String, String> = [("k".to_string(), "v".to_string())].into();
        write_safetensors(&path, [("a", &a), ("b", &b)], Some(&m)).unwrap();
        let back = read_safetensors(&path).unwrap();
        assert_eq!(back["a"], a);
        assert_eq!(back["b"], b);
        // The reference parser accepts the file, metadata included.
        let bytes = fs::read(&path).unwrap();
        let (n, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(n % 8, 0);
        assert_eq!(meta.metadata().as_ref().unwrap()["k"], "v");
        // No temp files are left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(write_safetensors(&path, [("a", &a), ("a", &b)], None).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mapped_and_owned_bytes_read_alike() {
        let (bytes, a, b) = sample();
        let dir = std::env::temp_dir().join(format!("prfl-st-alike-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.safetensors");
        fs::write(&path, &bytes).unwrap();
        let mapped = Safetensors::map(&path).unwrap();
        let owned = Safetensors::from_bytes(bytes).unwrap();
        assert_eq!(mapped.path(), Some(path.as_path()));
        assert_eq!(owned.path(), None);
        assert_eq!(owned.source(), Path::new(MEMORY_SOURCE));
        for st in [&mapped, &owned] {
            assert_eq!(st.tensors(), mapped.tensors());
            assert_eq!(st.metadata()["k"], "v");
            assert_eq!(st.read("a").unwrap(), a);
            assert_eq!(st.read("b").unwrap(), b);
            assert!(matches!(st.read("c"), Err(Error::MissingTensor(_))));
            // F32 first (descending element size), each aligned to its element size.
            let e = &st.tensors()[0];
            assert_eq!(
                (e.name.as_str(), e.dtype, e.range.start % 8),
                ("b", Some(DType::F32), 0)
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn header_errors_have_one_message_per_kind() {
        let (bytes, ..) = sample();
        let msg = |b: &[u8]| match Safetensors::from_bytes(b.to_vec()) {
            Err(Error::Checkpoint { path, msg }) => {
                assert_eq!(path, Path::new(MEMORY_SOURCE));
                msg
            }
            other => panic!("{other:?}"),
        };
        assert!(msg(&bytes[..5]).starts_with("truncated: 5 bytes"));
        assert!(msg(&bytes[..20]).contains("the header claims"));
        let m = msg(&bytes[..bytes.len() - 2]);
        assert!(
            m.starts_with("truncated") && m.contains("past the end"),
            "{m}"
        );
        let mut long = bytes.clone();
        long.extend_from_slice(&[0; 4]);
        assert!(msg(&long).contains("4 bytes follow"), "{}", msg(&long));
        let mut garbage = bytes.clone();
        garbage[8..16].copy_from_slice(b"########");
        assert!(msg(&garbage).starts_with("corrupt or not a safetensors file"));
        // An unknown dtype: serde's reason is kept.
        let at = bytes.windows(6).position(|w| w == b"\"BF16\"").unwrap();
        let mut unknown = bytes.clone();
        unknown[at + 1..at + 3].copy_from_slice(b"QQ");
        let m = msg(&unknown);
        assert!(m.contains("QQ16"), "{m}");
    }

    #[test]
    fn unsupported_dtypes_are_entries_that_refuse_to_read() {
        use ::safetensors::tensor::TensorView;
        let data: Vec<u8> = (0..4i64).flat_map(|v| v.to_le_bytes()).collect();
        let views = [("n", TensorView::new(StDtype::I64, vec![4], &data).unwrap())];
        let bytes = ::safetensors::serialize(views, &None).unwrap();
        let st = Safetensors::from_bytes(bytes).unwrap();
        let e = &st.tensors()[0];
        assert_eq!((e.dtype, e.stored_dtype.as_str()), (None, "I64"));
        let err = st.read("n").unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedDtype(m) if m.contains("I64") && m.contains("`n`")),
            "{err}"
        );
    }
}
