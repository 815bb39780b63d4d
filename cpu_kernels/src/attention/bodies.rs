//! Inner loops of the attention microkernels: q·k dot blocks and p·v accumulation.

use super::*;

/// `s[m][b] = Σ_j K[b][j] · Q[m][j]` for `PB` keys (rows `ks` f32 apart) and `M` query rows
/// (`qs` apart), both `dv` vectors long (zero-padded); `s` rows are `ss` apart.
#[inline(always)]
pub(super) unsafe fn dot_body<S: Simd, const M: usize, const PB: usize>(
    k: *const f32,
    ks: usize,
    q: *const f32,
    qs: usize,
    dv: usize,
    s: *mut f32,
    ss: usize,
) {
    let mut acc = [[S::zero(); M]; PB];
    for v in 0..dv {
        for (b, acc_b) in acc.iter_mut().enumerate() {
            let kv = S::load(k.add(b * ks + v * S::L));
            for (m, a) in acc_b.iter_mut().enumerate() {
                *a = S::fma(kv, S::load(q.add(m * qs + v * S::L)), *a);
            }
        }
    }
    let mut spill = [[[0.0f32; 16]; M]; PB];
    for b in 0..PB {
        for m in 0..M {
            S::store(spill[b][m].as_mut_ptr(), acc[b][m]);
        }
    }
    for (b, sb) in spill.iter().enumerate() {
        for (m, v) in sb.iter().enumerate() {
            *s.add(m * ss + b) = S::hsum(S::load(v.as_ptr()));
        }
    }
}

/// `O[m][jv] = O[m][jv] · corr[m] + Σ_p P[m][p] · V[p][jv]` for `JV` vectors of dims,
/// `M` rows (`O` rows `os` apart, `P` rows `ps` apart), `cn` positions (V rows `vs` apart).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pv_small_body<S: Simd, const M: usize, const JV: usize>(
    v: *const f32,
    vs: usize,
    p: *const f32,
    ps: usize,
    cn: usize,
    o: *mut f32,
    os: usize,
    corr: *const f32,
) {
    let mut acc = [[S::zero(); JV]; M];
    for (m, acc_m) in acc.iter_mut().enumerate() {
        let c = S::splat(*corr.add(m));
        for (j, a) in acc_m.iter_mut().enumerate() {
            *a = S::mul(S::load(o.add(m * os + j * S::L)), c);
        }
    }
    for pi in 0..cn {
        let mut vv = [S::zero(); JV];
        for (j, x) in vv.iter_mut().enumerate() {
            *x = S::load(v.add(pi * vs + j * S::L));
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
/// `MV` vectors of query rows (`Qᵀ` rows `mp` f32 apart); `s` rows are `mp` apart.
#[inline(always)]
pub(super) unsafe fn qk_body<S: Simd, const MV: usize, const PB: usize>(
    k: *const u8,
    ks: usize,
    qt: *const f32,
    mp: usize,
    d: usize,
    s: *mut f32,
) {
    let mut acc = [[S::zero(); MV]; PB];
    for j in 0..d {
        let mut q = [S::zero(); MV];
        for (v, qv) in q.iter_mut().enumerate() {
            *qv = S::load(qt.add(j * mp + v * S::L));
        }
        for (b, acc_b) in acc.iter_mut().enumerate() {
            let kb = S::splat(std::ptr::read_unaligned(k.add(b * ks + j * 4) as *const f32));
            for (a, qv) in acc_b.iter_mut().zip(q) {
                *a = S::fma(kb, qv, *a);
            }
        }
    }
    for (b, acc_b) in acc.iter().enumerate() {
        for (v, a) in acc_b.iter().enumerate() {
            S::store(s.add(b * mp + v * S::L), *a);
        }
    }
}

/// `Oᵀ[jb][v] = Oᵀ[jb][v] · corr[v] + Σ_p V[p][jb] · P[p][v]` for `JB` dims (V rows `vs`
/// bytes apart, f32, starting at the block's first dim) over `cn` positions.
#[inline(always)]
pub(super) unsafe fn pv_body<S: Simd, const MV: usize, const JB: usize>(
    v: *const u8,
    vs: usize,
    p: *const f32,
    mp: usize,
    cn: usize,
    ot: *mut f32,
    corr: *const f32,
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
