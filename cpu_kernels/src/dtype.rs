//! Element types of stored weights and KV caches.

use half::{bf16, f16};

/// Element type of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE-754 binary32.
    F32,
    /// IEEE-754 binary16.
    F16,
    /// bfloat16 (the upper 16 bits of an f32).
    BF16,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Lower-case name as used on the command line and in reports (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

/// Const-generic code of [`DType::F32`] (const generics cannot take a `DType`): kernels
/// monomorphised per storage dtype take one of these codes ([`DType::code`]).
pub(crate) const DT_F32: u8 = 0;
/// Const-generic code of [`DType::F16`] (see [`DT_F32`]).
pub(crate) const DT_F16: u8 = 1;
/// Const-generic code of [`DType::BF16`] (see [`DT_F32`]).
pub(crate) const DT_BF16: u8 = 2;

/// Element bytes of dtype code `dt` ([`DT_F32`], …).
#[inline(always)]
pub(crate) const fn elem_size(dt: u8) -> usize {
    if dt == DT_F32 {
        4
    } else {
        2
    }
}

impl DType {
    /// The const-generic code of the dtype ([`DT_F32`], [`DT_F16`], [`DT_BF16`]).
    pub(crate) fn code(self) -> u8 {
        match self {
            DType::F32 => DT_F32,
            DType::F16 => DT_F16,
            DType::BF16 => DT_BF16,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads element `i` of a little-endian buffer of `dtype` as f32.
///
/// Panics if `i` is out of bounds (callers index within shapes they validated).
#[inline]
pub fn load_f32(data: &[u8], dtype: DType, i: usize) -> f32 {
    match dtype {
        DType::F32 => {
            let b = &data[i * 4..i * 4 + 4];
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
        DType::F16 => f16::from_bits(u16::from_le_bytes([data[i * 2], data[i * 2 + 1]])).to_f32(),
        DType::BF16 => bf16::from_bits(u16::from_le_bytes([data[i * 2], data[i * 2 + 1]])).to_f32(),
    }
}

/// Converts `out.len()` elements starting at element `start` of `data` to f32.
///
/// Panics if the elements run past the end of `data`.
pub fn to_f32_slice(data: &[u8], dtype: DType, start: usize, out: &mut [f32]) {
    let es = dtype.size();
    let src = &data[start * es..(start + out.len()) * es];
    match dtype {
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
    }
}

/// Rounds `src` to `dtype` and writes it at elements `start..start + src.len()` of `data`
/// (little-endian; round to nearest even, as [`store_f32`]).
///
/// Panics if the elements run past the end of `data`.
pub fn store_f32_slice(data: &mut [u8], dtype: DType, start: usize, src: &[f32]) {
    let es = dtype.size();
    let dst = &mut data[start * es..(start + src.len()) * es];
    match dtype {
        DType::F32 => {
            for (b, v) in dst.chunks_exact_mut(4).zip(src) {
                b.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (b, v) in dst.chunks_exact_mut(2).zip(src) {
                b.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (b, v) in dst.chunks_exact_mut(2).zip(src) {
                b.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
        }
    }
}

/// Rounds an f32 to `dtype` and writes it at element `i` (little-endian).
#[inline]
pub fn store_f32(data: &mut [u8], dtype: DType, i: usize, v: f32) {
    match dtype {
        DType::F32 => data[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes()),
        DType::F16 => data[i * 2..i * 2 + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes()),
        DType::BF16 => data[i * 2..i * 2 + 2].copy_from_slice(&bf16::from_f32(v).to_le_bytes()),
    }
}
