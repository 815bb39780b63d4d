//! RMSNorm: `y = x / sqrt(mean(x²) + eps) * weight` (Zhang & Sennrich 2019), computed in f32
//! as transformers' `LlamaRMSNorm` does.

/// Normalises each row of `x` (`[rows, dim]`, `dim = weight.len()`) in place.
///
/// Panics if `x.len()` is not a multiple of `weight.len()`.
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    assert!(
        dim > 0 && x.len() % dim == 0,
        "rms_norm: x must be [rows, {dim}]"
    );
    for row in x.chunks_exact_mut(dim) {
        let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = *v * inv * w;
        }
    }
}

/// Writes `rms_norm(x)` into `out` (same shape as `x`).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    rms_norm_inplace(out, weight, eps);
}
