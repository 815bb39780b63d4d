//! Named weight tensors in their stored dtype, backed by a memory map or an owned buffer,
//! with shape/dtype validation that names the tensor and its origin in errors.

use crate::error::{Error, Result};
use memmap2::Mmap;
use specmoe_cpu_kernels::matmul::WeightMatrix;
use specmoe_cpu_kernels::DType;
use std::collections::HashMap;
use std::sync::Arc;

/// Bytes a tensor lives in.
#[derive(Debug)]
pub enum Storage {
    /// A memory-mapped safetensors file (weights stay in the page cache, not copied).
    Mmap(Mmap),
    /// An owned buffer whose first byte is 64-byte aligned (random benchmark weights,
    /// small checkpoints copied to aligned memory, tests).
    Owned(AlignedBytes),
}

impl Storage {
    /// The whole buffer.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v.as_slice(),
        }
    }
}

/// One cache line: the unit (and alignment) of [`AlignedBytes`].
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct CacheLine([u8; 64]);

/// A zero-initialised byte buffer that starts on a 64-byte boundary, so that a tensor placed
/// at a multiple of 64 bytes in it has cache-line-aligned rows wherever its rows are a
/// multiple of 64 bytes long (every vector load of the matmul kernels then touches one
/// line instead of two).
#[derive(Clone, Debug)]
pub struct AlignedBytes {
    lines: Vec<CacheLine>,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        AlignedBytes {
            lines: vec![CacheLine([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `lines` holds `len.div_ceil(64) * 64 >= len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut u8, self.len) }
    }
}

/// One tensor: dtype, shape and a byte range of a shared [`Storage`].
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    storage: Arc<Storage>,
    offset: usize,
    len: usize,
}

impl Tensor {
    /// A tensor over `storage[offset..offset + len]`.
    ///
    /// Errors if the range is outside the storage or does not match `shape` × dtype size.
    pub fn new(
        dtype: DType,
        shape: Vec<usize>,
        storage: Arc<Storage>,
        offset: usize,
        len: usize,
    ) -> Result<Self> {
        let want = shape.iter().product::<usize>() * dtype.size();
        if want != len || offset + len > storage.bytes().len() {
            return Err(Error::Input(format!(
                "tensor of shape {shape:?} {dtype} needs {want} bytes, has {len} at offset {offset} of {}",
                storage.bytes().len()
            )));
        }
        Ok(Tensor {
            dtype,
            shape,
            storage,
            offset,
            len,
        })
    }

    /// The tensor's bytes (little-endian elements).
    pub fn bytes(&self) -> &[u8] {
        &self.storage.bytes()[self.offset..self.offset + self.len]
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// A 2-D tensor as a `[rows, cols]` weight matrix for the matmul kernels.
    pub fn matrix(&self) -> WeightMatrix<'_> {
        let cols = *self.shape.last().unwrap_or(&1);
        let rows = self.numel() / cols.max(1);
        WeightMatrix::new(self.dtype, rows, cols, self.bytes())
    }

    /// The elements converted to f32 (for small tensors: norms, biases).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.numel()];
        specmoe_cpu_kernels::dtype::to_f32_slice(self.bytes(), self.dtype, 0, &mut out);
        out
    }
}

/// Tensors by Hugging Face name, with the place they came from for error messages.
#[derive(Debug, Default)]
pub struct TensorStore {
    tensors: HashMap<String, Tensor>,
    /// Checkpoint directory or description, used in errors.
    pub origin: String,
}

impl TensorStore {
    /// An empty store; `origin` names where its tensors come from.
    pub fn new(origin: impl Into<String>) -> Self {
        TensorStore {
            tensors: HashMap::new(),
            origin: origin.into(),
        }
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), t);
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total bytes of all tensors.
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.len).sum()
    }

    fn tensor_err(&self, name: &str, msg: String) -> Error {
        Error::Tensor {
            name: name.to_string(),
            origin: self.origin.clone(),
            msg,
        }
    }

    /// The tensor `name` with exactly `shape`, in a float dtype (f32, f16, bf16).
    ///
    /// Errors: missing tensor, other shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| self.tensor_err(name, "missing from the checkpoint".into()))?;
        if t.shape != shape {
            return Err(
                self.tensor_err(name, format!("has shape {:?}, expected {shape:?}", t.shape))
            );
        }
        Ok(t.clone())
    }

    /// A 1-D tensor of `len` elements converted to f32 (norm weights, biases).
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(self.get(name, &[len])?.to_f32_vec())
    }
}
