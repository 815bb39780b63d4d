//! Softmax, top-k and argmax over f32 rows (router and sampling).

/// Numerically stable softmax of `x` in place (f32, max-subtracted).
pub fn softmax_inplace(x: &mut [f32]) {
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
        if best.len() == k && !(v > best[k - 1].1) {
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
    let mut bi = 0;
    let mut bv = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if v > bv {
            bv = v;
            bi = i;
        }
    }
    bi
}
