//! RMSNorm: `y = x / sqrt(mean(x²) + eps) * weight` (Zhang & Sennrich 2019), computed in f32
//! as transformers' `LlamaRMSNorm` does.

use crate::dispatch::{active, usable, Isa};
use crate::simd::{isa_entry, Simd};

/// Normalises each row of `x` (`[rows, dim]`, `dim = weight.len()`) in place, on the
/// active path.
///
/// Panics if `weight` is empty or `x.len()` is not a multiple of `weight.len()`.
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    rms_norm_inplace_with(active(), x, weight, eps)
}

/// [`rms_norm_inplace`] on an explicit path. The vector paths sum the squares in another
/// order than the scalar one (results agree to a few ulp).
///
/// Panics as [`rms_norm_inplace`].
pub fn rms_norm_inplace_with(isa: Isa, x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    assert!(
        dim > 0 && x.len().is_multiple_of(dim),
        "rms_norm: x must be [rows, {dim}]"
    );
    match usable(isa) {
        Isa::Scalar => rms_norm_scalar(x, weight, eps),
        // SAFETY: every row pointer covers `dim` f32 of `x`; `weight` has `dim` f32.
        isa => unsafe {
            for row in x.chunks_exact_mut(dim) {
                rms_row(isa, row.as_mut_ptr(), weight.as_ptr(), dim, eps);
            }
        },
    }
}

/// Writes `rms_norm(x)` into `out` (same shape as `x`) on the active path.
///
/// Panics as [`rms_norm_inplace`], or if `out.len() != x.len()`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    rms_norm_inplace(out, weight, eps);
}

/// [`rms_norm`] on an explicit path.
pub fn rms_norm_with(isa: Isa, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    rms_norm_inplace_with(isa, out, weight, eps);
}

/// Scalar reference.
fn rms_norm_scalar(x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    for row in x.chunks_exact_mut(dim) {
        let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = *v * inv * w;
        }
    }
}

#[inline(always)]
unsafe fn rms_row_generic<S: Simd>(x: *mut f32, w: *const f32, n: usize, eps: f32) {
    let mut acc = [S::zero(); 4];
    let mut i = 0;
    while i + 4 * S::L <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let v = S::load(x.add(i + k * S::L));
            *a = S::fma(v, v, *a);
        }
        i += 4 * S::L;
    }
    while i + S::L <= n {
        let v = S::load(x.add(i));
        acc[0] = S::fma(v, v, acc[0]);
        i += S::L;
    }
    if i < n {
        let v = S::load_partial(x.add(i), n - i);
        acc[1] = S::fma(v, v, acc[1]);
    }
    let ss = S::hsum(S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3]))) / n as f32;
    let inv = S::splat(1.0 / (ss + eps).sqrt());
    let mut i = 0;
    while i + S::L <= n {
        let v = S::mul(S::mul(S::load(x.add(i)), inv), S::load(w.add(i)));
        S::store(x.add(i), v);
        i += S::L;
    }
    if i < n {
        let v = S::mul(
            S::mul(S::load_partial(x.add(i), n - i), inv),
            S::load_partial(w.add(i), n - i),
        );
        S::store_partial(x.add(i), v, n - i);
    }
}

isa_entry!(fn rms_row => rms_row_generic(x: *mut f32, w: *const f32, n: usize, eps: f32));
