//! Per-path register tiles of the chunked verification attention: the `AttnTiles` trait,
//! its implementations for each instruction set, scratch handling and the two item forms
//! (broadcast and small-M).

use super::bodies::*;
use super::*;

/// Per-path register tiles of the attention microkernels.
pub(crate) trait AttnTiles: Simd {
    /// Items with at most this many query rows take the small-`M` form ([`item_small`]).
    const SMALL_M: usize;
    /// Runs [`item_cfg`] with `MV = mv` query vectors and this path's key/dim block.
    unsafe fn item(s: &SeqRef<'_>, it: &Item, mv: usize);
    /// Runs [`item_small`] with `M = m` query rows and this path's blocks.
    unsafe fn item_small(s: &SeqRef<'_>, it: &Item, m: usize);
    /// [`dot_body`] as its own function with the path's target features.
    unsafe fn dot<const M: usize, const PB: usize>(
        k: *const f32,
        ks: usize,
        q: *const f32,
        qs: usize,
        dv: usize,
        s: *mut f32,
        ss: usize,
    );
    /// [`pv_small_body`] as its own function with the path's target features.
    #[allow(clippy::too_many_arguments)]
    unsafe fn pv_small<const M: usize, const JV: usize>(
        v: *const f32,
        vs: usize,
        p: *const f32,
        ps: usize,
        cn: usize,
        o: *mut f32,
        os: usize,
        corr: *const f32,
    );
    /// [`qk_body`] as its own function with the path's target features.
    unsafe fn qk<const MV: usize, const PB: usize>(
        k: *const u8,
        ks: usize,
        qt: *const f32,
        mp: usize,
        d: usize,
        s: *mut f32,
    );
    /// [`pv_body`] as its own function with the path's target features.
    unsafe fn pv<const MV: usize, const JB: usize>(
        v: *const u8,
        vs: usize,
        p: *const f32,
        mp: usize,
        cn: usize,
        ot: *mut f32,
        corr: *const f32,
    );
}

macro_rules! attn_tiles {
    (
        $ty:ty, $($feat:literal)?,
        [$(($mv:literal, $pb:literal)),*],
        $small:literal, [$(($m:literal, $spb:literal, $jv:literal)),*]
    ) => {
        impl AttnTiles for $ty {
            const SMALL_M: usize = $small;
            #[inline(always)]
            unsafe fn item(s: &SeqRef<'_>, it: &Item, mv: usize) {
                match mv {
                    $($mv => item_cfg::<Self, $mv, $pb>(s, it),)*
                    _ => unreachable!("query block larger than the tile"),
                }
            }
            #[inline(always)]
            unsafe fn item_small(s: &SeqRef<'_>, it: &Item, m: usize) {
                match m {
                    $($m => item_small::<Self, $m, $spb, $jv>(s, it),)*
                    _ => unreachable!("small query block larger than the tile"),
                }
            }
            $(#[target_feature(enable = $feat)])?
            #[inline(never)]
            unsafe fn qk<const MV: usize, const PB: usize>(
                k: *const u8,
                ks: usize,
                qt: *const f32,
                mp: usize,
                d: usize,
                s: *mut f32,
            ) {
                qk_body::<Self, MV, PB>(k, ks, qt, mp, d, s)
            }
            $(#[target_feature(enable = $feat)])?
            #[inline(never)]
            unsafe fn pv<const MV: usize, const JB: usize>(
                v: *const u8,
                vs: usize,
                p: *const f32,
                mp: usize,
                cn: usize,
                ot: *mut f32,
                corr: *const f32,
            ) {
                pv_body::<Self, MV, JB>(v, vs, p, mp, cn, ot, corr)
            }
            $(#[target_feature(enable = $feat)])?
            #[inline(never)]
            unsafe fn dot<const M: usize, const PB: usize>(
                k: *const f32,
                ks: usize,
                q: *const f32,
                qs: usize,
                dv: usize,
                s: *mut f32,
                ss: usize,
            ) {
                dot_body::<Self, M, PB>(k, ks, q, qs, dv, s, ss)
            }
            $(#[target_feature(enable = $feat)])?
            #[inline(never)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn pv_small<const M: usize, const JV: usize>(
                v: *const f32,
                vs: usize,
                p: *const f32,
                ps: usize,
                cn: usize,
                o: *mut f32,
                os: usize,
                corr: *const f32,
            ) {
                pv_small_body::<Self, M, JV>(v, vs, p, ps, cn, o, os, corr)
            }
        }
    };
}

// Broadcast form: (MV query vectors, PB keys / JB dims per microkernel). Small-M form:
// up to SMALL_M rows, (M rows, PB keys per dot block, JV vectors of dims per PV block).
// Accumulators + operands fit the register file (32 zmm / 16 ymm / 32 q).
#[cfg(target_arch = "x86_64")]
attn_tiles!(
    crate::simd::x86::Avx512,
    "avx512f,avx2,fma,f16c",
    [(1, 8), (2, 8), (3, 6), (4, 4)],
    8,
    [
        (1, 8, 8),
        (2, 8, 8),
        (3, 5, 4),
        (4, 4, 4),
        (5, 3, 4),
        (6, 2, 4),
        (7, 2, 2),
        (8, 2, 2)
    ]
);
#[cfg(target_arch = "x86_64")]
attn_tiles!(
    crate::simd::x86::Avx2,
    "avx2,fma,f16c",
    [(1, 8), (2, 4), (3, 3), (4, 2)],
    4,
    [(1, 8, 4), (2, 4, 4), (3, 3, 2), (4, 2, 2)]
);
#[cfg(target_arch = "aarch64")]
attn_tiles!(
    crate::simd::neon::Neon,
    "neon",
    [
        (1, 8),
        (2, 8),
        (3, 6),
        (4, 4),
        (5, 4),
        (6, 4),
        (7, 3),
        (8, 2)
    ],
    2,
    [(1, 8, 8), (2, 8, 8)]
);
attn_tiles!(
    crate::simd::portable::Portable, ,
    [(1, 8), (2, 4), (3, 3), (4, 2)],
    4, [(1, 8, 4), (2, 4, 4), (3, 3, 2), (4, 2, 2)]
);

thread_local! {
    /// The thread's attention scratch, reused across items (taken out while in use).
    static ATTN_SCRATCH: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Widens `n` elements of `dt` at `src` to f32 at `dst`.
#[inline(always)]
pub(super) unsafe fn widen_row<S: Simd>(dt: DType, src: *const u8, dst: *mut f32, n: usize) {
    let mut j = 0;
    match dt {
        DType::BF16 => {
            while j + S::L <= n {
                S::store(dst.add(j), S::bf16(src.add(2 * j)));
                j += S::L;
            }
        }
        DType::F16 => {
            while j + S::L <= n {
                S::store(dst.add(j), S::f16(src.add(2 * j)));
                j += S::L;
            }
        }
        DType::F32 => {
            while j + S::L <= n {
                S::store(dst.add(j), S::load(src.add(4 * j) as *const f32));
                j += S::L;
            }
        }
    }
    if j < n {
        let bytes = std::slice::from_raw_parts(src, n * dt.size());
        while j < n {
            *dst.add(j) = load_f32(bytes, dt, j);
            j += 1;
        }
    }
}

/// Copies rows `c0..c0 + cn` of KV heads `h0..h0 + nh` into `scratch` as f32
/// (`[head][row][ds]`, widening f16/bf16), token by token (a token-major cache is read
/// sequentially), and prefetches the same rows of the next chunk (`next_n` rows at
/// `c0 + cn`) into L2. Always copying keeps the microkernels' rows contiguous and off
/// power-of-two strides (a token-major cache puts one head's rows `kv_heads · d` elements
/// apart, which maps them all to the same L1 set).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn copy_chunk<S: Simd>(
    kv: &KvView<'_>,
    c0: usize,
    cn: usize,
    next_n: usize,
    h0: usize,
    nh: usize,
    scratch: *mut f32,
    ds: usize,
) {
    let lay = kv.layout;
    let base = kv.data.as_ptr();
    let esz = kv.dtype.size();
    for p in 0..cn {
        for h in 0..nh {
            let src = base.add(lay.offset(c0 + p, h0 + h) * esz);
            widen_row::<S>(
                kv.dtype,
                src,
                scratch.add((h * KV_CHUNK + p) * ds),
                lay.head_dim,
            );
            if p < next_n {
                prefetch_row::<S>(kv, c0 + cn + p, h0 + h);
            }
        }
    }
}

/// Row stride (f32) of the KV chunk scratch: `d` rounded up to 16, plus 16 so that
/// consecutive rows fall in different L1 sets.
pub(super) fn chunk_stride(d: usize) -> usize {
    d.div_ceil(16) * 16 + 16
}

/// Prefetches KV row `t` of head `h` into L2.
#[inline(always)]
pub(super) unsafe fn prefetch_row<S: Simd>(kv: &KvView<'_>, t: usize, h: usize) {
    let esz = kv.dtype.size();
    let start = kv.data.as_ptr().wrapping_add(kv.layout.offset(t, h) * esz);
    let bytes = kv.layout.head_dim * esz;
    let mut o = 0;
    while o < bytes {
        S::prefetch_l2(start.wrapping_add(o));
        o += 64;
    }
}

/// Splits `buf` (grown as needed, 64-byte aligned) into consecutive parts of the given
/// f32 lengths, each starting on a 64-byte boundary.
pub(super) unsafe fn carve<const N: usize>(
    buf: &mut Vec<Line>,
    parts: [usize; N],
) -> [*mut f32; N] {
    let total: usize = parts.iter().map(|n| n.div_ceil(16) * 16).sum();
    let base = aligned_f32(buf, total);
    let mut ptrs = [std::ptr::null_mut::<f32>(); N];
    let mut off = 0;
    for (p, n) in ptrs.iter_mut().zip(parts) {
        *p = base.add(off);
        off += n.div_ceil(16) * 16;
    }
    ptrs
}

/// The geometry shared by both forms of a work item.
pub(super) struct Geometry {
    d: usize,
    heads: usize,
    group: usize,
    /// Earlier positions `l = kv_len − n`.
    l: usize,
    /// Heads of the item.
    nh: usize,
    /// Query rows of the item (per head).
    rows: usize,
    /// Positions any row of the item can see: `l + i_last + 1`.
    kv_end: usize,
    /// First position some row of the item cannot see: `l + i_first + 1`.
    first_masked: usize,
    /// Row stride of the chunk scratch.
    ds: usize,
}

impl Geometry {
    fn new(s: &SeqRef<'_>, it: &Item) -> Self {
        let lay = s.k.layout;
        let group = s.shape.n_heads / lay.kv_heads;
        let l = s.shape.kv_len - s.shape.n_queries;
        Geometry {
            d: lay.head_dim,
            heads: s.shape.n_heads,
            group,
            l,
            nh: it.h1 - it.h0,
            rows: it.m1 - it.m0,
            kv_end: l + (it.m1 - 1) / group + 1,
            first_masked: l + it.m0 / group + 1,
            ds: chunk_stride(lay.head_dim),
        }
    }

    /// Query index and query head of row `m` (of the KV head's `n · group`) of head `kvh`.
    fn query(&self, m: usize, kvh: usize) -> (usize, usize) {
        (m / self.group, kvh * self.group + m % self.group)
    }
}

/// One work item in the broadcast form, with `MV` vectors of query rows and key/dim blocks
/// of `PB` (see the module documentation).
#[inline(always)]
pub(super) unsafe fn item_cfg<S: AttnTiles, const MV: usize, const PB: usize>(
    s: &SeqRef<'_>,
    it: &Item,
) {
    let g = Geometry::new(s, it);
    let (d, ds, nh) = (g.d, g.ds, g.nh);
    let mp = MV * S::L;
    let c = KV_CHUNK;

    let mut buf = ATTN_SCRATCH.with(|x| x.take());
    let [qt, ot, sc, kc, vc, mrow, lsum, corr, ipos] = carve(
        &mut buf,
        [
            nh * d * mp,
            nh * d * mp,
            c * mp,
            nh * c * ds,
            nh * c * ds,
            nh * mp,
            nh * mp,
            mp,
            mp,
        ],
    );
    // Qᵀ (pre-scaled) and Oᵀ = 0 per head, per-row state.
    std::ptr::write_bytes(qt, 0, nh * d * mp);
    std::ptr::write_bytes(ot, 0, nh * d * mp);
    for x in 0..nh * mp {
        *mrow.add(x) = f32::NEG_INFINITY;
        *lsum.add(x) = 0.0;
    }
    for mi in 0..mp {
        // Padding rows are never masked.
        *ipos.add(mi) = if mi < g.rows {
            ((it.m0 + mi) / g.group) as f32
        } else {
            1e30
        };
    }
    for h in 0..nh {
        for mi in 0..g.rows {
            let (i, qh) = g.query(it.m0 + mi, it.h0 + h);
            let q = &s.q[(i * g.heads + qh) * d..(i * g.heads + qh + 1) * d];
            for (j, &qj) in q.iter().enumerate() {
                *qt.add((h * d + j) * mp + mi) = qj * s.shape.scale;
            }
        }
    }

    let mut c0 = 0;
    while c0 < g.kv_end {
        let cn = c.min(g.kv_end - c0);
        let next_n = c.min(g.kv_end - c0 - cn);
        copy_chunk::<S>(&s.k, c0, cn, next_n, it.h0, nh, kc, ds);
        copy_chunk::<S>(&s.v, c0, cn, next_n, it.h0, nh, vc, ds);
        for h in 0..nh {
            let (qt, ot) = (qt.add(h * d * mp), ot.add(h * d * mp));
            let (mrow, lsum) = (mrow.add(h * mp), lsum.add(h * mp));
            let (kp, vp) = (
                kc.add(h * c * ds) as *const u8,
                vc.add(h * c * ds) as *const u8,
            );
            // Scores Sᵀ[p][m].
            let mut p = 0;
            while p < cn {
                if p + PB <= cn {
                    S::qk::<MV, PB>(kp.add(p * ds * 4), ds * 4, qt, mp, d, sc.add(p * mp));
                    p += PB;
                } else {
                    S::qk::<MV, 1>(kp.add(p * ds * 4), ds * 4, qt, mp, d, sc.add(p * mp));
                    p += 1;
                }
            }
            // Causal mask inside the trailing block: row m sees key p iff p − l ≤ i(m).
            if c0 + cn > g.first_masked {
                let ninf = S::splat(f32::NEG_INFINITY);
                for p in g.first_masked.max(c0)..c0 + cn {
                    let thr = S::splat((p - g.l) as f32);
                    for v in 0..MV {
                        let at = sc.add((p - c0) * mp + v * S::L);
                        let keep = S::load(ipos.add(v * S::L));
                        S::store(at, S::select_ge(keep, thr, S::load(at), ninf));
                    }
                }
            }
            // Online softmax: new max, correction of the old state, probabilities in place.
            for v in 0..MV {
                let o = v * S::L;
                let old = S::load(mrow.add(o));
                let mut mx = old;
                for p in 0..cn {
                    mx = S::max(mx, S::load(sc.add(p * mp + o)));
                }
                let cr = S::exp(S::sub(old, mx));
                let mut sum = S::zero();
                for p in 0..cn {
                    let at = sc.add(p * mp + o);
                    let e = S::exp(S::sub(S::load(at), mx));
                    S::store(at, e);
                    sum = S::add(sum, e);
                }
                S::store(lsum.add(o), S::fma(S::load(lsum.add(o)), cr, sum));
                S::store(mrow.add(o), mx);
                S::store(corr.add(o), cr);
            }
            // Oᵀ = Oᵀ · corr + Vᵀ P.
            let mut j = 0;
            while j < d {
                if j + PB <= d {
                    S::pv::<MV, PB>(vp.add(j * 4), ds * 4, sc, mp, cn, ot.add(j * mp), corr);
                    j += PB;
                } else {
                    S::pv::<MV, 1>(vp.add(j * 4), ds * 4, sc, mp, cn, ot.add(j * mp), corr);
                    j += 1;
                }
            }
        }
        c0 += cn;
    }

    let out = s.out.get();
    for h in 0..nh {
        for mi in 0..g.rows {
            let (i, qh) = g.query(it.m0 + mi, it.h0 + h);
            let inv = 1.0 / *lsum.add(h * mp + mi);
            let o = out.add((i * g.heads + qh) * d);
            for j in 0..d {
                *o.add(j) = *ot.add((h * d + j) * mp + mi) * inv;
            }
        }
    }
    ATTN_SCRATCH.with(|x| x.set(buf));
}

/// One work item with few query rows (`M ≤ SMALL_M`, e.g. decode: `M = group`), where the
/// broadcast form would leave most lanes idle. Same single pass and online softmax, but
/// vectorised along the head dimension: scores are dot products (`M` rows × `PB` keys of
/// vector accumulators, then horizontal sums), `O[m][:] += P[m][p] · V[p][:]` with `P`
/// broadcast. Rows are zero-padded to `dp` (a multiple of `L`).
#[inline(always)]
pub(super) unsafe fn item_small<S: AttnTiles, const M: usize, const PB: usize, const JV: usize>(
    s: &SeqRef<'_>,
    it: &Item,
) {
    let g = Geometry::new(s, it);
    let (d, nh) = (g.d, g.nh);
    let c = KV_CHUNK;
    let dp = d.div_ceil(S::L) * S::L;
    let dv = dp / S::L;
    let ds = g.ds.max(dp);

    let mut buf = ATTN_SCRATCH.with(|x| x.take());
    let [qs, os, sc, kc, vc, mrow, lsum, corr] = carve(
        &mut buf,
        [
            nh * M * dp,
            nh * M * dp,
            M * c,
            nh * c * ds,
            nh * c * ds,
            nh * M,
            nh * M,
            M,
        ],
    );
    // Zero Q, O and the K/V padding columns (`d..dp`, never written by the chunk copies):
    // stale values there would meet the zero padding of Q and P as NaN.
    std::ptr::write_bytes(qs, 0, nh * M * dp);
    std::ptr::write_bytes(os, 0, nh * M * dp);
    if dp > d {
        for r in 0..nh * c {
            std::ptr::write_bytes(kc.add(r * ds + d), 0, dp - d);
            std::ptr::write_bytes(vc.add(r * ds + d), 0, dp - d);
        }
    }
    for x in 0..nh * M {
        *mrow.add(x) = f32::NEG_INFINITY;
        *lsum.add(x) = 0.0;
    }
    let mut ipos = [0usize; M];
    for (mi, ip) in ipos.iter_mut().enumerate() {
        *ip = (it.m0 + mi) / g.group;
    }
    for h in 0..nh {
        for mi in 0..M {
            let (i, qh) = g.query(it.m0 + mi, it.h0 + h);
            let q = &s.q[(i * g.heads + qh) * d..(i * g.heads + qh + 1) * d];
            for (j, &qj) in q.iter().enumerate() {
                *qs.add((h * M + mi) * dp + j) = qj * s.shape.scale;
            }
        }
    }

    let mut c0 = 0;
    while c0 < g.kv_end {
        let cn = c.min(g.kv_end - c0);
        let next_n = c.min(g.kv_end - c0 - cn);
        copy_chunk::<S>(&s.k, c0, cn, next_n, it.h0, nh, kc, ds);
        copy_chunk::<S>(&s.v, c0, cn, next_n, it.h0, nh, vc, ds);
        for h in 0..nh {
            let (qs, os) = (qs.add(h * M * dp), os.add(h * M * dp));
            let (mrow, lsum) = (mrow.add(h * M), lsum.add(h * M));
            let (kp, vp) = (kc.add(h * c * ds), vc.add(h * c * ds));
            // Scores s[m][p].
            let mut p = 0;
            while p < cn {
                if p + PB <= cn {
                    S::dot::<M, PB>(kp.add(p * ds), ds, qs, dp, dv, sc.add(p), c);
                    p += PB;
                } else {
                    S::dot::<M, 1>(kp.add(p * ds), ds, qs, dp, dv, sc.add(p), c);
                    p += 1;
                }
            }
            // Causal mask inside the trailing block.
            if c0 + cn > g.first_masked {
                for (mi, &i) in ipos.iter().enumerate() {
                    for p in g.first_masked.max(c0)..c0 + cn {
                        if p - g.l > i {
                            *sc.add(mi * c + p - c0) = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            // Online softmax per row.
            for mi in 0..M {
                let row = sc.add(mi * c);
                let mut vmax = S::splat(f32::NEG_INFINITY);
                let mut p = 0;
                while p + S::L <= cn {
                    vmax = S::max(vmax, S::load(row.add(p)));
                    p += S::L;
                }
                let mut mx = (*mrow.add(mi)).max(S::hmax(vmax));
                for q in p..cn {
                    mx = mx.max(*row.add(q));
                }
                let cr = (*mrow.add(mi) - mx).exp();
                let m = S::splat(mx);
                let mut vsum = S::zero();
                let mut p = 0;
                while p + S::L <= cn {
                    let e = S::exp(S::sub(S::load(row.add(p)), m));
                    S::store(row.add(p), e);
                    vsum = S::add(vsum, e);
                    p += S::L;
                }
                let mut sum = S::hsum(vsum);
                for q in p..cn {
                    let e = (*row.add(q) - mx).exp();
                    *row.add(q) = e;
                    sum += e;
                }
                *lsum.add(mi) = *lsum.add(mi) * cr + sum;
                *mrow.add(mi) = mx;
                *corr.add(mi) = cr;
            }
            // O[m][:] = O[m][:] · corr[m] + Σ_p P[m][p] · V[p][:].
            let mut jv = 0;
            while jv < dv {
                let (v, o) = (vp.add(jv * S::L), os.add(jv * S::L));
                if jv + JV <= dv {
                    S::pv_small::<M, JV>(v, ds, sc, c, cn, o, dp, corr);
                    jv += JV;
                } else {
                    S::pv_small::<M, 1>(v, ds, sc, c, cn, o, dp, corr);
                    jv += 1;
                }
            }
        }
        c0 += cn;
    }

    let out = s.out.get();
    for h in 0..nh {
        for mi in 0..M {
            let (i, qh) = g.query(it.m0 + mi, it.h0 + h);
            let inv = 1.0 / *lsum.add(h * M + mi);
            let o = out.add((i * g.heads + qh) * d);
            for j in 0..d {
                *o.add(j) = *os.add((h * M + mi) * dp + j) * inv;
            }
        }
    }
    ATTN_SCRATCH.with(|x| x.set(buf));
}
