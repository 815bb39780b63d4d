//! The register tile: `R` weight rows × `TB` tokens of vector accumulators over a run of
//! steps, the ragged column tail, and the transposing horizontal sums into `out`.

use super::rows::{elem_size, step_len, DT_BF16, DT_F16};
use crate::simd::Simd;

/// [`Mk::flags`]: reduce into `out` at the end (else store the partial sums to `acc`).
pub(super) const MK_REDUCE: u8 = 1;
/// [`Mk::flags`]: prefetch each row block's successor into L2 while it runs.
pub(super) const MK_PF: u8 = 2;

/// From this token block on, `x` is read by the FMAs straight from L1 ([`Simd::fma_mem_at`])
/// instead of being held in registers: `R · TB` accumulators and one row's converted
/// weights are all the tile keeps live.
const X_MEM_TB: usize = 7;

/// Arguments of one microkernel call: `nrb` consecutive row blocks of `R` rows, one token
/// block of `TB` tokens, one column range.
pub(crate) struct Mk {
    /// First weight byte of the first row at the first step.
    pub(super) w: *const u8,
    /// Bytes between weight rows.
    pub(super) wrs: usize,
    /// First packed `x` element of the token block's first token at the first step (the
    /// block's tokens follow each other, `step` f32 each; see [`super::pack_x`]).
    pub(super) x: *const f32,
    /// f32 between consecutive steps of the token block's packed `x` (`TB · step`).
    pub(super) sx: usize,
    /// Full steps to run.
    pub(super) steps: usize,
    /// Ragged columns after the steps (only on the last column block), `< step`.
    pub(super) tail: usize,
    /// Row blocks to run back to back (1 when `acc` is used).
    pub(super) nrb: usize,
    /// Matrix rows from the first row on (bounds the prefetch of the next row block).
    pub(super) rows_left: usize,
    /// `out[t0, r]`: output of the first token and row.
    pub(super) out: *mut f32,
    /// f32 between output token rows.
    pub(super) ldo: usize,
    /// Partial-sum slots `[R · TB][16]`, or null: start from zero and keep everything in
    /// registers (then `MK_REDUCE` must be set).
    pub(super) acc: *mut f32,
    /// Start from the partial sums in `acc` (else from zero).
    pub(super) load: bool,
    /// [`MK_REDUCE`] | [`MK_PF`].
    pub(super) flags: u8,
}

/// Runs `k.nrb` row blocks: for each, loads or zeroes the accumulators, runs the
/// [`microkernel`] over the steps (prefetching the next row block if asked), then the
/// ragged tail from a zero-padded copy of the rows' last bytes, then either reduces into
/// `out` (transposing horizontal sums, [`Simd::hsums`]) or stores the partial sums.
#[inline(always)]
pub(super) unsafe fn mk_body<S: Simd, const DT: u8, const R: usize, const TB: usize>(k: &Mk) {
    let esz = elem_size(DT);
    let step = step_len::<S>(DT);
    for i in 0..k.nrb {
        let w = k.w.add(i * R * k.wrs);
        let mut a = [[S::zero(); TB]; R];
        if k.load {
            for (r, row) in a.iter_mut().enumerate() {
                for (t, v) in row.iter_mut().enumerate() {
                    *v = S::load(k.acc.add((r * TB + t) * 16));
                }
            }
        }
        let pf_rows = if k.flags & MK_PF != 0 {
            k.rows_left.saturating_sub((i + 1) * R).min(R)
        } else {
            0
        };
        a = if pf_rows == R {
            microkernel::<S, DT, R, TB, true>(w, k.wrs, k.x, k.sx, k.steps, a, w.add(R * k.wrs))
        } else {
            microkernel::<S, DT, R, TB, false>(w, k.wrs, k.x, k.sx, k.steps, a, w)
        };
        if k.tail > 0 {
            let mut buf = [[0u8; 64]; R];
            for (r, b) in buf.iter_mut().enumerate() {
                std::ptr::copy_nonoverlapping(
                    w.add(r * k.wrs + k.steps * step * esz),
                    b.as_mut_ptr(),
                    k.tail * esz,
                );
            }
            a = microkernel::<S, DT, R, TB, false>(
                buf.as_ptr() as *const u8,
                64,
                k.x.add(k.steps * k.sx),
                k.sx,
                1,
                a,
                w,
            );
        }
        if k.flags & MK_REDUCE != 0 {
            // Sums in `[R][TB]` order, then scattered to `out[t, r]`.
            let mut sums = [[0.0f32; TB]; R];
            // SAFETY (of the casts): `[[V; TB]; R]` and `[[f32; TB]; R]` are contiguous
            // arrays of `R · TB` elements.
            S::hsums(
                std::slice::from_raw_parts(a.as_ptr() as *const S::V, R * TB),
                sums.as_mut_ptr() as *mut f32,
            );
            let out = k.out.add(i * R);
            for (r, row) in sums.iter().enumerate() {
                for (t, &v) in row.iter().enumerate() {
                    *out.add(t * k.ldo + r) = v;
                }
            }
        } else {
            for (r, row) in a.iter().enumerate() {
                for (t, v) in row.iter().enumerate() {
                    S::store(k.acc.add((r * TB + t) * 16), *v);
                }
            }
        }
    }
}

/// `acc[r][t] += Σ_k w[r, k] · x[t, k]` over `steps` steps, vector-wise (reduced later).
/// `w` rows are `wrs` bytes apart; `x` is step-major (packed by [`super::pack_x`]): step `s`
/// of token `t` at `x + s·sx + t·step`. With `PF`, prefetches `pf` (same geometry as `w`)
/// into L2.
///
/// Per step each row's weights are converted once (bf16: one shift and one mask give the
/// even and odd halves) and FMA'd against the `TB` tokens' `x` vectors, which the compiler
/// keeps in registers across the `R` rows, or, from `TB` = [`X_MEM_TB`] on, which the FMAs
/// read from L1 as memory operands at constant displacements from one pointer per step
/// ([`Simd::fma_mem_at`]). Either way each accumulator gets the same FMAs in the same
/// order.
#[inline(always)]
unsafe fn microkernel<S: Simd, const DT: u8, const R: usize, const TB: usize, const PF: bool>(
    w: *const u8,
    wrs: usize,
    x: *const f32,
    sx: usize,
    steps: usize,
    mut acc: [[S::V; TB]; R],
    pf: *const u8,
) -> [[S::V; TB]; R] {
    let esz = elem_size(DT);
    let step = step_len::<S>(DT);
    let pair = DT == DT_BF16;
    // One prefetch per row per 64 bytes of weights.
    let pf_every = (64 / (step * esz)).max(1);
    let mut wp = w;
    let mut pfp = pf;
    let mut xp = x;
    for s in 0..steps {
        if PF && s % pf_every == 0 {
            for r in 0..R {
                S::prefetch_l2(pfp.wrapping_add(r * wrs));
            }
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let wr = wp.add(r * wrs);
            let (w0, w1) = if DT == DT_BF16 {
                S::bf16x2(wr)
            } else if DT == DT_F16 {
                (S::f16(wr), S::zero())
            } else {
                (S::load(wr as *const f32), S::zero())
            };
            if TB >= X_MEM_TB {
                fma_tokens_mem::<S, TB>(pair, w0, w1, xp, acc_r);
            } else if pair {
                for (t, a) in acc_r.iter_mut().enumerate() {
                    let xt = xp.add(t * step);
                    *a = S::fma(w0, S::load(xt), *a);
                    *a = S::fma(w1, S::load(xt.add(S::L)), *a);
                }
            } else {
                for (t, a) in acc_r.iter_mut().enumerate() {
                    *a = S::fma(w0, S::load(xp.add(t * step)), *a);
                }
            }
        }
        xp = xp.add(sx);
        wp = wp.add(step * esz);
        pfp = pfp.wrapping_add(step * esz);
    }
    acc
}

/// One row's FMAs of a step for all `TB ≤ 8` tokens of a step-major `x` at `xp`, reading
/// `x` as memory operands ([`Simd::fma2_mem_at`] for pairs, else [`Simd::fma_mem_at`]).
#[inline(always)]
unsafe fn fma_tokens_mem<S: Simd, const TB: usize>(
    pair: bool,
    w0: S::V,
    w1: S::V,
    xp: *const f32,
    acc: &mut [S::V; TB],
) {
    let acc: &mut [S::V] = acc;
    macro_rules! tokens {
        ($($t:literal)*) => {$(
            if $t < TB {
                acc[$t] = if pair {
                    S::fma2_mem_at::<$t>(w0, w1, xp, acc[$t])
                } else {
                    S::fma_mem_at::<$t>(w0, xp, acc[$t])
                };
            }
        )*};
    }
    const { assert!(TB <= 8, "the memory-operand tile covers at most 8 tokens") };
    tokens!(0 1 2 3 4 5 6 7);
}
