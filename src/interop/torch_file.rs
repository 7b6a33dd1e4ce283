//! PyTorch state-dict files (`torch.save(module.state_dict(), path)`, the zip format torch has
//! written since 1.6), read without Python and without executing anything, and written so that
//! `torch.load` (including its default `weights_only=True`) and `load_state_dict` accept them.
//!
//! The archive holds `<name>/data.pkl` (the pickle, read by [`super::pickle`]), one
//! `<name>/data/<key>` record of raw little-endian bytes per storage, and `<name>/version`,
//! `<name>/byteorder`. Records may be stored or deflated. Torch's legacy (pre-1.6, non-zip)
//! format is refused with a message saying so.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::Path;

use half::{bf16, f16};

use super::pickle::{self, StateDictPickler, StorageDType, TensorRef, Value};
use crate::tensor::{DType, HostTensor, Storage};
use crate::{Error, Result};

/// One tensor of a state dict, made contiguous: `data` holds `shape.iter().product()` elements of
/// `dtype`, little-endian, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchTensor {
    pub dtype: StorageDType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl TorchTensor {
    /// As a host tensor: f32, bf16 and f16 keep their dtype, f64 becomes f32; integer and bool
    /// tensors are refused (`what` names the tensor in the error).
    pub fn to_host(&self, what: &str) -> Result<HostTensor> {
        let storage = match self.dtype {
            StorageDType::F32 => Storage::from_le_bytes(&self.data, DType::F32),
            StorageDType::BF16 => Storage::from_le_bytes(&self.data, DType::BF16),
            StorageDType::F16 => Storage::from_le_bytes(&self.data, DType::F16),
            StorageDType::F64 => Storage::F32(
                self.data
                    .chunks_exact(8)
                    .map(|c| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(c);
                        f64::from_le_bytes(a) as f32
                    })
                    .collect(),
            ),
            other => {
                return Err(Error::UnsupportedDtype(format!(
                    "{other:?} of tensor `{what}` (expected a floating-point tensor)"
                )))
            }
        };
        HostTensor::new(self.shape.clone(), storage)
    }
}

fn file_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::checkpoint(path, msg.to_string())
}

/// Reads a state dict (a flat dict from names to tensors) from a torch zip file.
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, TorchTensor>> {
    let file = crate::fs::open_regular(path)?;
    read_state_dict_from(file).map_err(|e| match e {
        Error::InvalidInput(msg) => file_err(path, msg),
        other => other,
    })
}

/// [`read_state_dict`] from any seekable reader (errors as [`Error::InvalidInput`]).
pub fn read_state_dict_from<R: Read + Seek>(
    mut reader: R,
) -> Result<BTreeMap<String, TorchTensor>> {
    let mut magic = [0u8; 4];
    let legacy = reader
        .read_exact(&mut magic)
        .map(|()| magic != *b"PK\x03\x04")
        .unwrap_or(true);
    reader
        .seek(std::io::SeekFrom::Start(0))
        .map_err(|e| Error::InvalidInput(format!("cannot seek: {e}")))?;
    if legacy {
        return Err(Error::InvalidInput(
            "not a zip archive: torch's zip format (torch >= 1.6) is expected; a legacy \
             torch.save file can be re-saved with torch.save(torch.load(f), f)"
                .into(),
        ));
    }
    let mut zip = zip::ZipArchive::new(reader)
        .map_err(|e| Error::InvalidInput(format!("corrupt zip archive: {e}")))?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .map(str::to_string)
        .ok_or_else(|| Error::InvalidInput("the archive has no data.pkl".into()))?;
    let prefix = pkl_name.strip_suffix("data.pkl").unwrap_or("").to_string();
    let pkl = read_record(&mut zip, &pkl_name, MAX_PICKLE_BYTES)?;
    let value = pickle::parse(&pkl)?;
    let Value::Dict(items) = value else {
        return Err(Error::InvalidInput(
            "data.pkl is not a dict (a state dict was expected)".into(),
        ));
    };
    let mut storages: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (k, v) in items {
        let (Value::Str(name), Value::Tensor(t)) = (k, v) else {
            return Err(Error::InvalidInput(
                "a state dict entry that is not `name: tensor`".into(),
            ));
        };
        if !storages.contains_key(&t.key) {
            let rec = format!("{prefix}data/{}", t.key);
            let want = t
                .storage_numel
                .checked_mul(t.dtype.size_in_bytes())
                .ok_or_else(|| Error::InvalidInput(format!("storage of `{name}` overflows")))?;
            let bytes = read_record(&mut zip, &rec, want as u64)?;
            if bytes.len() != want {
                return Err(Error::InvalidInput(format!(
                    "record {rec} of tensor `{name}` holds {} bytes; its storage needs {want}",
                    bytes.len()
                )));
            }
            storages.insert(t.key.clone(), bytes);
        }
        let data = gather(&t, &storages[&t.key])
            .map_err(|msg| Error::InvalidInput(format!("tensor `{name}`: {msg}")))?;
        if out
            .insert(
                name.clone(),
                TorchTensor {
                    dtype: t.dtype,
                    shape: t.shape,
                    data,
                },
            )
            .is_some()
        {
            return Err(Error::InvalidInput(format!(
                "tensor `{name}` appears twice"
            )));
        }
    }
    Ok(out)
}

/// The largest pickle accepted: a state dict's pickle is a few bytes per tensor.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Reads one record, at most `limit` bytes (one more is read to notice a longer record), so that a
/// record whose declared or deflated size lies cannot make the reader allocate without bound.
fn read_record<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>> {
    let f = zip
        .by_name(name)
        .map_err(|e| Error::InvalidInput(format!("record {name}: {e}")))?;
    if f.size() > limit {
        return Err(Error::InvalidInput(format!(
            "record {name} holds {} bytes; at most {limit} expected",
            f.size()
        )));
    }
    let mut buf = Vec::with_capacity(f.size() as usize);
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::InvalidInput(format!("record {name}: {e}")))?;
    Ok(buf)
}

/// Copies the (possibly strided) view `t` out of its storage bytes into a contiguous buffer.
fn gather(t: &TensorRef, storage: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let es = t.dtype.size_in_bytes();
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("its size overflows")?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    // The furthest element the view touches must lie inside the storage.
    let mut last = t.offset;
    for (&d, &s) in t.shape.iter().zip(&t.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| last.checked_add(x))
            .ok_or("its strides overflow")?;
    }
    if last >= t.storage_numel {
        return Err(format!(
            "its view (offset {}, size {:?}, stride {:?}) reaches past its storage of {} elements",
            t.offset, t.shape, t.stride, t.storage_numel
        ));
    }
    let mut out = Vec::with_capacity(numel * es);
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let at = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[at * es..(at + 1) * es]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

/// Reads a state dict and converts every tensor with [`TorchTensor::to_host`].
pub fn read_host_state_dict(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    read_state_dict(path)?
        .into_iter()
        .map(|(k, t)| {
            let h = t.to_host(&k).map_err(|e| file_err(path, e.to_string()))?;
            Ok((k, h))
        })
        .collect()
}

/// Writes host tensors as a torch state dict (`OrderedDict`, entries in the given order, every
/// tensor its own storage, f32 / bf16 / f16 as stored), atomically. `archive` is the top folder
/// inside the zip (torch uses the file's stem).
pub fn write_state_dict<'a>(
    path: &Path,
    archive: &str,
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
) -> Result<()> {
    let mut pickler = StateDictPickler::new();
    let mut records: Vec<Vec<u8>> = Vec::new();
    for (i, (name, t)) in tensors.into_iter().enumerate() {
        let dtype = match t.dtype() {
            DType::F32 => StorageDType::F32,
            DType::BF16 => StorageDType::BF16,
            DType::F16 => StorageDType::F16,
        };
        pickler.tensor(name, i, dtype, &t.shape);
        records.push(t.data.to_le_bytes());
    }
    let tmp = path.with_extension("tmp-write");
    let result = (|| -> std::result::Result<(), String> {
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut zip = zip::ZipWriter::new(file);
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default());
        // torch aligns storage records to 64 bytes so that `torch.load(mmap=True)` can map them.
        let aligned = stored.with_alignment(64);
        let mut put = |name: String, bytes: &[u8], opts| -> std::result::Result<(), String> {
            zip.start_file(name, opts).map_err(|e| e.to_string())?;
            zip.write_all(bytes).map_err(|e| e.to_string())
        };
        put(format!("{archive}/data.pkl"), &pickler.finish(), stored)?;
        put(format!("{archive}/byteorder"), b"little", stored)?;
        for (i, r) in records.iter().enumerate() {
            put(format!("{archive}/data/{i}"), r, aligned)?;
        }
        put(format!("{archive}/version"), b"3\n", stored)?;
        let file = zip.finish().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())
    })();
    if let Err(msg) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(file_err(path, format!("writing a torch file: {msg}")));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// `f32` view of raw little-endian bytes of a floating dtype (for tests and diagnostics).
pub fn floats(t: &TorchTensor) -> Option<Vec<f32>> {
    let c2 = |c: &[u8]| [c[0], c[1]];
    Some(match t.dtype {
        StorageDType::F32 => t
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StorageDType::BF16 => t
            .data
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes(c2(c)).to_f32())
            .collect(),
        StorageDType::F16 => t
            .data
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes(c2(c)).to_f32())
            .collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("m.ckpt");
        let w = HostTensor::from_f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let b = HostTensor::new(vec![2], Storage::from_f32(&[0.5, -1.0], DType::BF16)).unwrap();
        write_state_dict(&p, "m", [("fc.weight", &w), ("fc.bias", &b)]).unwrap();
        p
    }

    #[test]
    fn writes_and_reads_back() {
        let dir = super::super::test_dir::TempDir::new("torch-file");
        let p = sample(dir.path());
        let sd = read_host_state_dict(&p).unwrap();
        assert_eq!(sd["fc.weight"].shape, vec![2, 3]);
        assert_eq!(sd["fc.weight"].to_f32(), vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(sd["fc.bias"].dtype(), DType::BF16);
        assert_eq!(sd["fc.bias"].to_f32(), vec![0.5, -1.0]);
    }

    #[test]
    fn strided_views_are_gathered() {
        let t = TensorRef {
            key: "0".into(),
            dtype: StorageDType::F32,
            storage_numel: 6,
            offset: 0,
            shape: vec![3, 2],
            stride: vec![1, 3],
        };
        let bytes: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let out = gather(&t, &bytes).unwrap();
        let v = floats(&TorchTensor {
            dtype: StorageDType::F32,
            shape: vec![3, 2],
            data: out,
        })
        .unwrap();
        assert_eq!(v, vec![0., 3., 1., 4., 2., 5.]);
        let past = TensorRef { offset: 1, ..t };
        assert!(gather(&past, &bytes)
            .unwrap_err()
            .contains("past its storage"));
    }

    #[test]
    fn truncated_and_foreign_files_are_errors() {
        let dir = super::super::test_dir::TempDir::new("torch-file-bad");
        let p = sample(dir.path());
        let bytes = std::fs::read(&p).unwrap();
        let cut = dir.path().join("cut.ckpt");
        std::fs::write(&cut, &bytes[..bytes.len() - 30]).unwrap();
        let e = read_state_dict(&cut).unwrap_err().to_string();
        assert!(e.contains("cut.ckpt") && e.contains("zip"), "{e}");
        let legacy = dir.path().join("legacy.pt");
        std::fs::write(&legacy, b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
        let e = read_state_dict(&legacy).unwrap_err().to_string();
        assert!(e.contains("legacy"), "{e}");
    }
}
