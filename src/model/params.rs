//! Parameters on a backend, addressed by index (the model resolves names to indices once), plus
//! the matching gradient buffers.
//!
//! Matrix weights (every linear layer and the patch embedding) keep a storage dtype and go through
//! the backend's GEMM; every other parameter (biases, norm weights, modulation tables) is an f32
//! buffer. Names are the canonical original-Wan2.1 names (`blocks.0.self_attn.q.weight`).

use std::collections::{BTreeMap, HashMap};

use crate::backend::Backend;
use crate::tensor::{DType, HostTensor, Storage};
use crate::{Error, Result};

pub enum ParamData<B: Backend> {
    /// A `[rows, cols]` matrix used as `y = x W^T`.
    Matrix(B::Weight),
    /// Anything else, in f32.
    Vector(B::Buf),
}

pub struct ParamStore<B: Backend> {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    data: Vec<ParamData<B>>,
    index: HashMap<String, usize>,
}

/// Whether a parameter is used as a GEMM operand (and so may be stored in half precision).
fn is_matrix(name: &str, shape: &[usize]) -> bool {
    name.ends_with(".weight") && (shape.len() == 2 || name == "patch_embedding.weight")
}

impl<B: Backend> ParamStore<B> {
    /// Uploads host tensors. `matrix_dtype` overrides the storage dtype of matrix weights (`None`
    /// keeps the checkpoint's); non-matrix parameters are always widened to f32.
    pub fn from_host(
        backend: &B,
        tensors: &BTreeMap<String, HostTensor>,
        matrix_dtype: Option<DType>,
    ) -> Self {
        let mut store = ParamStore {
            names: Vec::new(),
            shapes: Vec::new(),
            data: Vec::new(),
            index: HashMap::new(),
        };
        for (name, t) in tensors {
            let data = if is_matrix(name, &t.shape) {
                let rows = t.shape[0];
                let cols = t.numel() / rows.max(1);
                let storage = match matrix_dtype {
                    Some(dt) if dt != t.dtype() => Storage::from_f32(&t.to_f32(), dt),
                    _ => t.data.clone(),
                };
                ParamData::Matrix(backend.weight_from_host(&storage, rows, cols))
            } else {
                ParamData::Vector(backend.upload(&t.to_f32()))
            };
            store.index.insert(name.clone(), store.names.len());
            store.names.push(name.clone());
            store.shapes.push(t.shape.clone());
            store.data.push(data);
        }
        store
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Adds a parameter (adapters or a reward head attached after loading); returns its index.
    /// Matrix weights keep the tensor's dtype.
    pub fn insert(&mut self, backend: &B, name: &str, t: &HostTensor) -> Result<usize> {
        if self.index.contains_key(name) {
            return Err(Error::InvalidInput(format!(
                "parameter `{name}` already exists"
            )));
        }
        let data = if is_matrix(name, &t.shape) {
            let rows = t.shape[0];
            ParamData::Matrix(backend.weight_from_host(&t.data, rows, t.numel() / rows.max(1)))
        } else {
            ParamData::Vector(backend.upload(&t.to_f32()))
        };
        let id = self.names.len();
        self.index.insert(name.to_string(), id);
        self.names.push(name.to_string());
        self.shapes.push(t.shape.clone());
        self.data.push(data);
        Ok(id)
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn id(&self, name: &str) -> Result<usize> {
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    pub fn name(&self, id: usize) -> &str {
        &self.names[id]
    }

    pub fn shape(&self, id: usize) -> &[usize] {
        &self.shapes[id]
    }

    pub fn numel(&self, id: usize) -> usize {
        self.shapes[id].iter().product()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn matrix(&self, id: usize) -> &B::Weight {
        match &self.data[id] {
            ParamData::Matrix(w) => w,
            ParamData::Vector(_) => panic!("parameter {} is not a matrix", self.names[id]),
        }
    }

    pub fn vector(&self, id: usize) -> &B::Buf {
        match &self.data[id] {
            ParamData::Vector(v) => v,
            ParamData::Matrix(_) => panic!("parameter {} is not a vector", self.names[id]),
        }
    }

    pub fn data(&self, id: usize) -> &ParamData<B> {
        &self.data[id]
    }

    pub fn data_mut(&mut self, id: usize) -> &mut ParamData<B> {
        &mut self.data[id]
    }

    /// Replaces a parameter's values (shape checked; matrix weights keep their storage dtype).
    pub fn assign(&mut self, backend: &B, id: usize, t: &HostTensor) -> Result<()> {
        if t.numel() != self.numel(id) {
            return Err(Error::ShapeMismatch {
                name: self.names[id].clone(),
                got: t.shape.clone(),
                expected: self.shapes[id].clone(),
            });
        }
        match &mut self.data[id] {
            ParamData::Matrix(w) => {
                let master = backend.upload(&t.to_f32());
                backend.weight_assign(w, &master);
            }
            ParamData::Vector(v) => *v = backend.upload(&t.to_f32()),
        }
        Ok(())
    }

    /// Downloads one parameter as f32 host data in its stored shape.
    pub fn to_host(&self, backend: &B, id: usize) -> HostTensor {
        let data = match &self.data[id] {
            ParamData::Matrix(w) => backend.weight_to_host(w),
            ParamData::Vector(v) => Storage::F32(backend.download(v)),
        };
        HostTensor {
            shape: self.shapes[id].clone(),
            data,
        }
    }

    /// Bytes of parameter storage on the device.
    pub fn bytes(&self, backend: &B) -> usize {
        self.data
            .iter()
            .map(|d| match d {
                ParamData::Matrix(w) => {
                    let (r, c) = backend.weight_dims(w);
                    r * c * backend.weight_dtype(w).size_in_bytes()
                }
                ParamData::Vector(v) => backend.buf_bytes(v),
            })
            .sum()
    }
}

/// What a backward pass works with: the backend, the parameters it reads and the gradients it
/// accumulates into. Every layer's backward takes one, so the three travel together.
pub struct Backprop<'a, B: Backend> {
    pub be: &'a B,
    pub ps: &'a ParamStore<B>,
    pub grads: &'a mut Grads<B>,
}

/// f32 gradient buffers for the parameters that require them (`None` = frozen: the backward pass
/// skips that parameter's weight-gradient GEMM entirely).
pub struct Grads<B: Backend> {
    pub bufs: Vec<Option<B::Buf>>,
}

impl<B: Backend> Grads<B> {
    /// Zeroed gradients for every parameter for which `trainable(name)` holds.
    pub fn new(backend: &B, params: &ParamStore<B>, trainable: impl Fn(&str) -> bool) -> Self {
        let bufs = (0..params.len())
            .map(|i| trainable(params.name(i)).then(|| backend.zeros(params.numel(i))))
            .collect();
        Grads { bufs }
    }

    pub fn get_mut(&mut self, id: usize) -> Option<&mut B::Buf> {
        self.bufs[id].as_mut()
    }

    pub fn get(&self, id: usize) -> Option<&B::Buf> {
        self.bufs[id].as_ref()
    }

    /// Two distinct gradient buffers at once (a linear layer's weight and bias).
    pub fn pair_mut(&mut self, a: usize, b: usize) -> (Option<&mut B::Buf>, Option<&mut B::Buf>) {
        assert_ne!(a, b, "pair_mut needs two different parameters");
        if a < b {
            let (lo, hi) = self.bufs.split_at_mut(b);
            (lo[a].as_mut(), hi[0].as_mut())
        } else {
            let (lo, hi) = self.bufs.split_at_mut(a);
            (hi[0].as_mut(), lo[b].as_mut())
        }
    }

    pub fn zero(&mut self, backend: &B) {
        for b in self.bufs.iter_mut().flatten() {
            backend.fill_zero(b);
        }
    }
}
