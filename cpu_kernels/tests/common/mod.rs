//! Shared helpers of the conformance tests.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use specmoe_cpu_kernels::dtype::store_f32;
use specmoe_cpu_kernels::{DType, Isa};

pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Every path this CPU runs (always ends with `Scalar`).
pub fn paths() -> Vec<Isa> {
    Isa::supported()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn rand_f32(r: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| r.random_range(-1.0f32..1.0) * scale)
        .collect()
}

/// `n` random elements stored as `dtype`, placed at byte offset `offset` of the returned
/// buffer (to test unaligned data).
pub fn rand_stored(r: &mut StdRng, dtype: DType, n: usize, offset: usize) -> Vec<u8> {
    let mut buf = vec![0u8; offset + n * dtype.size()];
    for i in 0..n {
        let v = r.random_range(-1.0f32..1.0);
        store_f32(&mut buf[offset..], dtype, i, v);
    }
    buf
}
