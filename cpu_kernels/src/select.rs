//! Softmax, top-k and argmax over f32 rows (router and sampling).

use crate::dispatch::{active, usable, Isa};
use crate::simd::{isa_entry, Simd};

/// Numerically stable softmax of `x` in place (f32, max-subtracted), on the active path.
///
/// A row that is entirely −∞ (or empty) is left unchanged.
pub fn softmax_inplace(x: &mut [f32]) {
    softmax_inplace_with(active(), x)
}

/// [`softmax_inplace`] on an explicit path. The vector paths use a polynomial `exp`
/// (≤ 2 ulp) and another summation order: results agree with the scalar path to a few ulp.
pub fn softmax_inplace_with(isa: Isa, x: &mut [f32]) {
    match usable(isa) {
        Isa::Scalar => softmax_scalar(x),
        // SAFETY: the pointer covers `x.len()` f32.
        isa => unsafe { softmax_run(isa, x.as_mut_ptr(), x.len()) },
    }
}

#[inline(always)]
unsafe fn softmax_generic<S: Simd>(x: *mut f32, n: usize) {
    let ninf = S::splat(f32::NEG_INFINITY);
    let mut mx = ninf;
    let mut i = 0;
    while i + S::L <= n {
        mx = S::max(mx, S::load(x.add(i)));
        i += S::L;
    }
    let mut max = S::hmax(mx);
    for j in i..n {
        max = max.max(*x.add(j));
    }
    if max == f32::NEG_INFINITY {
        return;
    }
    let m = S::splat(max);
    let mut sum = S::zero();
    let mut i = 0;
    while i + S::L <= n {
        let e = S::exp(S::sub(S::load(x.add(i)), m));
        S::store(x.add(i), e);
        sum = S::add(sum, e);
        i += S::L;
    }
    if i < n {
        let e = S::exp(S::sub(S::load_partial(x.add(i), n - i), m));
        S::store_partial(x.add(i), e, n - i);
        // Reload: the lanes past the row hold exp(0 − max) and must not count.
        sum = S::add(sum, S::load_partial(x.add(i), n - i));
    }
    let inv = S::splat(1.0 / S::hsum(sum));
    let mut i = 0;
    while i + S::L <= n {
        S::store(x.add(i), S::mul(S::load(x.add(i)), inv));
        i += S::L;
    }
    if i < n {
        let v = S::mul(S::load_partial(x.add(i), n - i), inv);
        S::store_partial(x.add(i), v, n - i);
    }
}

isa_entry!(fn softmax_run => softmax_generic(x: *mut f32, n: usize));

/// Scalar reference of [`softmax_inplace`].
fn softmax_scalar(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Indices and values of the `k` largest entries of `x`, largest first; ties break toward
/// the lower index (as `torch.topk` does on CPU for the small rows of a router).
///
/// Returns fewer than `k` entries only if `x.len() < k`.
pub fn top_k(x: &[f32], k: usize) -> Vec<(usize, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in x.iter().enumerate() {
        if best.len() == k && v.partial_cmp(&best[k - 1].1) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        let pos = best.iter().position(|&(_, b)| v > b).unwrap_or(best.len());
        best.insert(pos, (i, v));
        best.truncate(k);
    }
    best
}

/// Index of the largest entry; ties break toward the lowest index (as `torch.argmax`).
/// NaN entries are never chosen. Returns 0 for an empty slice.
pub fn argmax(x: &[f32]) -> usize {
    // Two passes the compiler vectorises: the largest value (NaN never wins a `>`), then
    // its first index. Same answer as the one-pass scan, including all-NaN or all −∞ (0).
    const W: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; W];
    let chunks = x.chunks_exact(W);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let mut best = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(tail) {
        if v > best {
            best = v;
        }
    }
    x.iter().position(|&v| v == best).unwrap_or(0)
}
