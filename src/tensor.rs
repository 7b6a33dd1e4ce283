//! Host-side tensors: a shape plus data in one of the storage dtypes the engine accepts.
//!
//! Compute is always f32; storage may be f32, bf16 or f16 (through `half`), which halves the memory
//! of frozen weights. Conversion happens at the edge: when a checkpoint is read, when a weight is
//! handed to a backend, and when results are written out.

use std::borrow::Cow;

use half::{bf16, f16};

use crate::{Error, Result};

/// Element type of stored data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "f16" | "float16" | "fp16" | "half" => Ok(DType::F16),
            other => Err(Error::UnsupportedDtype(other.to_string())),
        }
    }
}

/// Flat data in a storage dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::BF16(_) => DType::BF16,
            Storage::F16(_) => DType::F16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Converts f32 data to the given storage dtype (round to nearest even).
    pub fn from_f32(data: &[f32], dtype: DType) -> Storage {
        match dtype {
            DType::F32 => Storage::F32(data.to_vec()),
            DType::BF16 => Storage::BF16(data.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => Storage::F16(data.iter().map(|&x| f16::from_f32(x)).collect()),
        }
    }

    /// Widens to f32 (exact for every storage dtype).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Storage::F32(v) => v.clone(),
            Storage::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// Widens elements `[start, start + out.len())` into `out`.
    pub fn read_f32_into(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        match self {
            Storage::F32(v) => out.copy_from_slice(&v[start..end]),
            Storage::BF16(v) => out
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(o, x)| *o = x.to_f32()),
            Storage::F16(v) => out
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(o, x)| *o = x.to_f32()),
        }
    }

    /// Decodes little-endian bytes of a safetensors tensor.
    pub fn from_le_bytes(bytes: &[u8], dtype: DType) -> Storage {
        match dtype {
            DType::F32 => Storage::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            DType::BF16 => Storage::BF16(
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            ),
            DType::F16 => Storage::F16(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            ),
        }
    }

    /// The little-endian bytes of the data (the safetensors layout), borrowed without a copy on
    /// little-endian machines; what writers and checksums read.
    pub fn le_bytes(&self) -> Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            match self {
                Storage::F32(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
                Storage::BF16(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
                Storage::F16(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            }
        } else {
            Cow::Owned(self.to_le_bytes())
        }
    }

    /// Encodes as little-endian bytes (the safetensors layout), always as a new buffer.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Storage::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::BF16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
            Storage::F16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        }
    }
}

/// A named-free host tensor: shape (row-major) and storage.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Storage,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Storage) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::InvalidInput(format!(
                "shape {shape:?} holds {n} elements but the data has {}",
                data.len()
            )));
        }
        Ok(HostTensor { shape, data })
    }

    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        Self::new(shape, Storage::F32(data))
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn to_f32(&self) -> Vec<f32> {
        self.data.to_f32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_round_trips_through_bytes() {
        let x = [1.0f32, -2.5, 3.25e-3, 65504.0];
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let s = Storage::from_f32(&x, dt);
            let back = Storage::from_le_bytes(&s.to_le_bytes(), dt);
            assert_eq!(s, back);
            assert_eq!(s.le_bytes().as_ref(), s.to_le_bytes().as_slice());
            let wide = s.to_f32();
            for (a, b) in x.iter().zip(&wide) {
                let tol = if dt == DType::F32 {
                    0.0
                } else {
                    4e-3 * a.abs()
                };
                assert!((a - b).abs() <= tol, "{dt:?}: {a} vs {b}");
            }
        }
    }
}
