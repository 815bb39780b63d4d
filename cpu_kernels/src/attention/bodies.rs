//! Inner loops of the attention microkernels: q·k score blocks and p·v accumulation, for
//! the broadcast form (rows in lanes) and the small form (keys or dims in lanes). Every
//! score and output element is computed with the same sequence of roundings in both forms.

use super::prefetch::ChunkPrefetch;
use super::*;
use crate::dtype::{elem_size, DT_BF16, DT_F16};

/// One vector of `L` elements of dtype code `DT` ([`crate::dtype::DT_F32`], …) at `src`,
/// widened to f32 (bf16 by shift, f16 by the path's conversion).
#[inline(always)]
pub(super) unsafe fn load_widened<S: Simd, const DT: u8>(src: *const u8) -> S::V {
    match DT {
        DT_BF16 => S::bf16(src),
        DT_F16 => S::f16(src),
        _ => S::load(src as *const f32),
    }
}

/// Keys-in-lanes scores of the small form: `s[m][p] = Σ_j Kᵀ[j][p] · Q[m][j]` for `MB`
/// query rows (`qs` f32 apart, `d` long) and `KV · L` keys of `Kᵀ` (`[d][kts]`); `s` rows
/// are `ss` apart. Each score is one FMA chain over `j = 0..d` from zero — the same
/// roundings as [`qk_body`]'s, so both forms give identical scores. The first `pf_n` steps
/// each prefetch the next line of `pf`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn qk_t_body<S: Simd, const MB: usize, const KV: usize>(
    kt: *const f32,
    kts: usize,
    q: *const f32,
    qs: usize,
    d: usize,
    s: *mut f32,
    ss: usize,
    pf: &mut ChunkPrefetch<'_>,
    pf_n: usize,
) {
    let mut acc = [[S::zero(); KV]; MB];
    for j in 0..d {
        if j < pf_n {
            pf.next::<S>();
        }
        let mut k = [S::zero(); KV];
        for (x, kx) in k.iter_mut().enumerate() {
            *kx = S::load(kt.add(j * kts + x * S::L));
        }
        for (m, acc_m) in acc.iter_mut().enumerate() {
            let qb = S::splat(*q.add(m * qs + j));
            for (a, kx) in acc_m.iter_mut().zip(k) {
                *a = S::fma(kx, qb, *a);
            }
        }
    }
    for (m, acc_m) in acc.iter().enumerate() {
        for (x, a) in acc_m.iter().enumerate() {
            S::store(s.add(m * ss + x * S::L), *a);
        }
    }
}

/// [`qk_t_body`] for `rows` rows in blocks of at most `MBMAX` (8, 4, 2, 1; as many
/// calls as [`super::prefetch::tile_calls`]`(rows, MBMAX)`), each prefetching on its first
/// `pf_n` steps.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn qk_t_rows<S: Simd, const MBMAX: usize, const KV: usize>(
    kt: *const f32,
    kts: usize,
    q: *const f32,
    qs: usize,
    d: usize,
    s: *mut f32,
    ss: usize,
    rows: usize,
    pf: &mut ChunkPrefetch<'_>,
    pf_n: usize,
) {
    let mut m = 0;
    while m < rows {
        let (q, s) = (q.add(m * qs), s.add(m * ss));
        let left = rows - m;
        m += if MBMAX >= 8 && left >= 8 {
            qk_t_body::<S, 8, KV>(kt, kts, q, qs, d, s, ss, pf, pf_n);
            8
        } else if MBMAX >= 4 && left >= 4 {
            qk_t_body::<S, 4, KV>(kt, kts, q, qs, d, s, ss, pf, pf_n);
            4
        } else if left >= 2 {
            qk_t_body::<S, 2, KV>(kt, kts, q, qs, d, s, ss, pf, pf_n);
            2
        } else {
            qk_t_body::<S, 1, KV>(kt, kts, q, qs, d, s, ss, pf, pf_n);
            1
        };
    }
}

/// [`pv_small_body`] for `rows` rows (blocks of at most `MBMAX`: 4, 2, 1) and `dv`
/// vectors of dims (blocks of 4, 2, 1): `tile_calls(rows, MBMAX) · tile_calls(dv, 4)`
/// calls ([`super::prefetch::tile_calls`]), each prefetching on its first `pf_n` steps.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pv_small_rows<S: Simd, const MBMAX: usize, const DT: u8>(
    v: *const u8,
    vs: usize,
    p: *const f32,
    ps: usize,
    cn: usize,
    o: *mut f32,
    os: usize,
    corr: *const f32,
    rows: usize,
    dv: usize,
    pf: &mut ChunkPrefetch<'_>,
    pf_n: usize,
) {
    let esz = elem_size(DT);
    let mut m = 0;
    while m < rows {
        let left = rows - m;
        let mb = if MBMAX >= 4 && left >= 4 {
            4
        } else if left >= 2 {
            2
        } else {
            1
        };
        let (p, o, corr) = (p.add(m * ps), o.add(m * os), corr.add(m));
        let mut j = 0;
        while j < dv {
            let (v, o) = (v.add(j * S::L * esz), o.add(j * S::L));
            let jv = if dv - j >= 4 {
                4
            } else if dv - j >= 2 {
                2
            } else {
                1
            };
            match (mb, jv) {
                (4, 4) => pv_small_body::<S, 4, 4, DT>(v, vs, p, ps, cn, o, os, corr, pf, pf_n),
                (4, 2) => pv_small_body::<S, 4, 2, DT>(v, vs, p, ps, cn, o, os, corr, pf, pf_n),
                (4, _) => pv_small_body::<S, 4, 1, DT>(v, vs, p, ps, cn, o, os, corr, pf, pf_n),
                (2, 4) => pv_small_body::<S, 2, 4, DT>(v, vs, p, ps, cn, o, os, corr, pf, pf_n),
                (2, 2) => pv_small_body::<S, 2, 2, DT>(v, vs, p, ps, cn, o, os, corr, pf, pf_n),
                (2, _) => pv_small_body::<S, 2, 1, DT>(v, vs, p, ps, cn, o, os, corr, pf, pf_n),
                (_, 4) => pv_small_body::<S, 1, 4, DT>(v, vs, p, ps, cn, o, os, corr, pf, pf_n),
                (_, 2) => pv_small_body::<S, 1, 2, DT>(v, vs, p, ps, cn, o, os, corr, pf, pf_n),
                _ => pv_small_body::<S, 1, 1, DT>(v, vs, p, ps, cn, o, os, corr, pf, pf_n),
            }
            j += jv;
        }
        m += mb;
    }
}

/// `O[m][jv] = O[m][jv] · corr[m] + Σ_p P[m][p] · V[p][jv]` for `JV` vectors of dims,
/// `M` rows (`O` rows `os` apart, `P` rows `ps` apart), `cn` positions (V rows of dtype
/// code `DT` ([`crate::dtype::DT_F32`], …), `vs` bytes apart, widened in registers as they
/// are loaded). The first `pf_n` position steps each prefetch the next line of `pf`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pv_small_body<S: Simd, const M: usize, const JV: usize, const DT: u8>(
    v: *const u8,
    vs: usize,
    p: *const f32,
    ps: usize,
    cn: usize,
    o: *mut f32,
    os: usize,
    corr: *const f32,
    pf: &mut ChunkPrefetch<'_>,
    pf_n: usize,
) {
    let esz = elem_size(DT);
    let mut acc = [[S::zero(); JV]; M];
    for (m, acc_m) in acc.iter_mut().enumerate() {
        let c = S::splat(*corr.add(m));
        for (j, a) in acc_m.iter_mut().enumerate() {
            *a = S::mul(S::load(o.add(m * os + j * S::L)), c);
        }
    }
    for pi in 0..cn {
        if pi < pf_n {
            pf.next::<S>();
        }
        let mut vv = [S::zero(); JV];
        for (j, x) in vv.iter_mut().enumerate() {
            *x = load_widened::<S, DT>(v.add(pi * vs + j * S::L * esz));
        }
        for (m, acc_m) in acc.iter_mut().enumerate() {
            let pw = S::splat(*p.add(m * ps + pi));
            for (a, x) in acc_m.iter_mut().zip(vv) {
                *a = S::fma(pw, x, *a);
            }
        }
    }
    for (m, acc_m) in acc.iter().enumerate() {
        for (j, a) in acc_m.iter().enumerate() {
            S::store(o.add(m * os + j * S::L), *a);
        }
    }
}

/// `s[b][v] = Σ_j K[b][j] · Qᵀ[j][v]` for `PB` keys (rows `ks` bytes apart, f32) against
/// `MV` vectors of query rows (`Qᵀ` rows `mp` f32 apart); `s` rows are `mp` apart. The
/// first `pf_n` steps each prefetch the next line of `pf`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn qk_body<S: Simd, const MV: usize, const PB: usize>(
    k: *const u8,
    ks: usize,
    qt: *const f32,
    mp: usize,
    d: usize,
    s: *mut f32,
    pf: &mut ChunkPrefetch<'_>,
    pf_n: usize,
) {
    let mut acc = [[S::zero(); MV]; PB];
    // One pointer per key, each advanced by one element per step: the keys' addresses are
    // then independent (indexed off one base, LLVM chained `PB − 1` additions of `ks` per
    // step, a latency chain longer than the step's FMAs).
    let mut kp = [k; PB];
    for (b, p) in kp.iter_mut().enumerate() {
        // Opaque to the optimiser, or it folds them back into one base plus a chain of `ks`.
        *p = std::hint::black_box(k.add(b * ks));
    }
    let mut qp = qt;
    for j in 0..d {
        if j < pf_n {
            pf.next::<S>();
        }
        let mut q = [S::zero(); MV];
        for (v, qv) in q.iter_mut().enumerate() {
            *qv = S::load(qp.add(v * S::L));
        }
        for (acc_b, p) in acc.iter_mut().zip(kp.iter_mut()) {
            let kb = S::splat(std::ptr::read_unaligned(*p as *const f32));
            for (a, qv) in acc_b.iter_mut().zip(q) {
                *a = S::fma(kb, qv, *a);
            }
            *p = p.add(4);
        }
        qp = qp.add(mp);
    }
    for (b, acc_b) in acc.iter().enumerate() {
        for (v, a) in acc_b.iter().enumerate() {
            S::store(s.add(b * mp + v * S::L), *a);
        }
    }
}

/// `Oᵀ[jb][v] = Oᵀ[jb][v] · corr[v] + Σ_p V[p][jb] · P[p][v]` for `JB` dims (V rows `vs`
/// bytes apart, f32, starting at the block's first dim) over `cn` positions, prefetching
/// the next `pf_n` lines of `pf` into L2, one per position step (the next KV chunk, spread
/// over the tiles).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pv_body<S: Simd, const MV: usize, const JB: usize>(
    v: *const u8,
    vs: usize,
    p: *const f32,
    mp: usize,
    cn: usize,
    ot: *mut f32,
    corr: *const f32,
    pf: &mut ChunkPrefetch<'_>,
    pf_n: usize,
) {
    let mut acc = [[S::zero(); MV]; JB];
    let mut c = [S::zero(); MV];
    for (i, cv) in c.iter_mut().enumerate() {
        *cv = S::load(corr.add(i * S::L));
    }
    for (jb, acc_j) in acc.iter_mut().enumerate() {
        for (i, a) in acc_j.iter_mut().enumerate() {
            *a = S::mul(S::load(ot.add(jb * mp + i * S::L)), c[i]);
        }
    }
    for pi in 0..cn {
        if pi < pf_n {
            pf.next::<S>();
        }
        let mut pw = [S::zero(); MV];
        for (i, w) in pw.iter_mut().enumerate() {
            *w = S::load(p.add(pi * mp + i * S::L));
        }
        let row = v.add(pi * vs);
        for (jb, acc_j) in acc.iter_mut().enumerate() {
            let vb = S::splat(std::ptr::read_unaligned(row.add(jb * 4) as *const f32));
            for (a, w) in acc_j.iter_mut().zip(pw) {
                *a = S::fma(vb, w, *a);
            }
        }
    }
    for (jb, acc_j) in acc.iter().enumerate() {
        for (i, a) in acc_j.iter().enumerate() {
            S::store(ot.add(jb * mp + i * S::L), *a);
        }
    }
}
