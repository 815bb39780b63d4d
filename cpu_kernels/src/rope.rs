//! Rotary position embedding, rotate-half layout (GPT-NeoX / Hugging Face Llama):
//! for `j < d/2`, `(x_j, x_{j+d/2}) ← (x_j cos θ − x_{j+d/2} sin θ, x_{j+d/2} cos θ + x_j sin θ)`
//! with `θ = pos · inv_freq[j]` (Su et al. 2021, RoFormer, eq. 34).

use crate::dispatch::{active, usable, Isa};
use crate::simd::{isa_entry, Simd};

/// Applies RoPE in place to `x` of shape `[n, heads, d]`, token `i` at `positions[i]`, on
/// the active path.
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
    rope_inplace_with(active(), x, heads, positions, inv_freq, attention_scaling)
}

/// [`rope_inplace`] on an explicit path. cos/sin are computed in scalar f32 on every path
/// and the rotation uses separate multiplies and adds (no FMA), so all paths give
/// bit-identical results.
///
/// Panics if shapes disagree.
pub fn rope_inplace_with(
    isa: Isa,
    x: &mut [f32],
    heads: usize,
    positions: &[usize],
    inv_freq: &[f32],
    attention_scaling: f32,
) {
    assert_eq!(
        x.len(),
        positions.len() * heads * 2 * inv_freq.len(),
        "rope: x must be [n, heads, d]"
    );
    let table = RopeTable::new(positions, inv_freq, attention_scaling);
    rope_apply_with(isa, x, heads, &table)
}

/// cos and sin of every (position, frequency) pair of a forward step, computed once and
/// shared by the q and k rotations of every layer.
///
/// `cos` and `sin` are f32 `[positions, d/2]` row-major, already multiplied by
/// `attention_scaling`; angles are `pos as f32 * inv_freq[j]` in f32, as transformers.
#[derive(Clone, Debug, Default)]
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// The table of `positions` for `inv_freq` (`d/2` entries, after any `rope_scaling`).
    pub fn new(positions: &[usize], inv_freq: &[f32], attention_scaling: f32) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &pos in positions {
            for &f in inv_freq {
                let theta = pos as f32 * f;
                cos.push(theta.cos() * attention_scaling);
                sin.push(theta.sin() * attention_scaling);
            }
        }
        RopeTable { half, cos, sin }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.cos.len().checked_div(self.half).unwrap_or(0)
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.cos.is_empty()
    }
}

/// Rotates `x` `[n, heads, d]` in place, token `i` by row `row0 + i` of `table`, on the
/// active path.
///
/// Panics if `x` is not `[n, heads, 2 · table half]` or the table has fewer than
/// `row0 + n` rows.
pub fn rope_apply(x: &mut [f32], heads: usize, table: &RopeTable, row0: usize) {
    rope_apply_rows(active(), x, heads, table, row0)
}

/// [`rope_apply`] on an explicit path, from table row 0.
pub fn rope_apply_with(isa: Isa, x: &mut [f32], heads: usize, table: &RopeTable) {
    rope_apply_rows(isa, x, heads, table, 0)
}

fn rope_apply_rows(isa: Isa, x: &mut [f32], heads: usize, table: &RopeTable, row0: usize) {
    let half = table.half;
    let d = 2 * half;
    if d == 0 || heads == 0 {
        return;
    }
    assert_eq!(x.len() % (heads * d), 0, "rope: x must be [n, heads, d]");
    let n = x.len() / (heads * d);
    assert!(row0 + n <= table.len(), "rope: table has too few positions");
    let isa = usable(isa);
    for i in 0..n {
        let cos = &table.cos[(row0 + i) * half..(row0 + i + 1) * half];
        let sin = &table.sin[(row0 + i) * half..(row0 + i + 1) * half];
        let v = &mut x[i * heads * d..(i + 1) * heads * d];
        if isa == Isa::Scalar {
            for v in v.chunks_exact_mut(d) {
                for j in 0..half {
                    let a = v[j];
                    let b = v[j + half];
                    v[j] = a * cos[j] - b * sin[j];
                    v[j + half] = b * cos[j] + a * sin[j];
                }
            }
        } else {
            // SAFETY: `v` has `heads * 2 * half` f32, `cos`/`sin` have `half`.
            unsafe { rope_run(isa, v.as_mut_ptr(), heads, cos.as_ptr(), sin.as_ptr(), half) };
        }
    }
}

/// Rotates the `heads` consecutive head vectors (`2 · half` f32 each) of one token at `v`.
#[inline(always)]
unsafe fn rope_generic<S: Simd>(
    v: *mut f32,
    heads: usize,
    cos: *const f32,
    sin: *const f32,
    half: usize,
) {
    for h in 0..heads {
        rope_head::<S>(v.add(h * 2 * half), cos, sin, half);
    }
}

#[inline(always)]
unsafe fn rope_head<S: Simd>(v: *mut f32, cos: *const f32, sin: *const f32, half: usize) {
    let mut j = 0;
    while j + S::L <= half {
        let (a, b) = (S::load(v.add(j)), S::load(v.add(j + half)));
        let (x, y) = rotate::<S>(a, b, S::load(cos.add(j)), S::load(sin.add(j)));
        S::store(v.add(j), x);
        S::store(v.add(j + half), y);
        j += S::L;
    }
    if j < half {
        let n = half - j;
        let (a, b) = (
            S::load_partial(v.add(j), n),
            S::load_partial(v.add(j + half), n),
        );
        let (x, y) = rotate::<S>(
            a,
            b,
            S::load_partial(cos.add(j), n),
            S::load_partial(sin.add(j), n),
        );
        S::store_partial(v.add(j), x, n);
        S::store_partial(v.add(j + half), y, n);
    }
}

isa_entry!(fn rope_run => rope_generic(v: *mut f32, heads: usize, cos: *const f32, sin: *const f32, half: usize));

/// `(a cos − b sin, b cos + a sin)` with separate roundings, as the scalar code.
#[inline(always)]
unsafe fn rotate<S: Simd>(a: S::V, b: S::V, c: S::V, s: S::V) -> (S::V, S::V) {
    (
        S::sub(S::mul(a, c), S::mul(b, s)),
        S::add(S::mul(b, c), S::mul(a, s)),
    )
}
