//! Rotary position embedding, rotate-half layout (GPT-NeoX / Hugging Face Llama):
//! for `j < d/2`, `(x_j, x_{j+d/2}) ← (x_j cos θ − x_{j+d/2} sin θ, x_{j+d/2} cos θ + x_j sin θ)`
//! with `θ = pos · inv_freq[j]` (Su et al. 2021, RoFormer, eq. 34).

/// Applies RoPE in place to `x` of shape `[n, heads, d]`, token `i` at `positions[i]`.
///
/// `inv_freq` has `d/2` entries (after any `rope_scaling`); the angle is computed in f32
/// as transformers does (`pos as f32 * inv_freq`), then multiplied by `attention_scaling`
/// for cos/sin (1.0 for default, linear and llama3 scaling).
///
/// Panics if shapes disagree.
pub fn rope_inplace(
    x: &mut [f32],
    heads: usize,
    positions: &[usize],
    inv_freq: &[f32],
    attention_scaling: f32,
) {
    let half = inv_freq.len();
    let d = 2 * half;
    assert_eq!(
        x.len(),
        positions.len() * heads * d,
        "rope: x must be [n, heads, d]"
    );
    let mut cos = vec![0.0f32; half];
    let mut sin = vec![0.0f32; half];
    for (i, &pos) in positions.iter().enumerate() {
        for j in 0..half {
            let theta = pos as f32 * inv_freq[j];
            cos[j] = theta.cos() * attention_scaling;
            sin[j] = theta.sin() * attention_scaling;
        }
        for h in 0..heads {
            let v = &mut x[(i * heads + h) * d..(i * heads + h + 1) * d];
            for j in 0..half {
                let a = v[j];
                let b = v[j + half];
                v[j] = a * cos[j] - b * sin[j];
                v[j + half] = b * cos[j] + a * sin[j];
            }
        }
    }
}
