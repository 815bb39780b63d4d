//! Per-path register tiles of the chunked verification attention: the `AttnTiles` trait,
//! its implementations for each instruction set, scratch handling and the broadcast form
//! of a work item (the small form is in `small.rs`).

use super::bodies::*;
use super::prefetch::{sw_prefetch, ChunkPrefetch};
use super::*;
use crate::dtype::{elem_size, DT_BF16, DT_F16, DT_F32};

/// Per-path register tiles of the attention microkernels.
pub(crate) trait AttnTiles: Simd {
    /// Items with at most this many query rows take the small form (`small::item_small`).
    const SMALL_M: usize;
    /// Most rows of one small-form score tile ([`AttnTiles::qk_rows`]).
    const QK_ROWS: usize;
    /// Most rows of one small-form output tile ([`AttnTiles::pv_rows`]).
    const PV_ROWS: usize;
    /// Runs [`item_cfg`] with `MV = mv` query vectors and this path's key/dim block.
    unsafe fn item(s: &SeqRef<'_>, it: &Item, mv: usize);
    /// [`qk_t_rows`] with this path's row block and `KV_CHUNK / L` key vectors.
    #[allow(clippy::too_many_arguments)]
    unsafe fn qk_rows(
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
    );
    /// [`pv_small_rows`] with this path's row block, for V rows of `dt` (`vs` bytes apart).
    #[allow(clippy::too_many_arguments)]
    unsafe fn pv_rows(
        dt: DType,
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
    );
    /// [`qk_body`] as its own function with the path's target features.
    #[allow(clippy::too_many_arguments)]
    unsafe fn qk<const MV: usize, const PB: usize>(
        k: *const u8,
        ks: usize,
        qt: *const f32,
        mp: usize,
        d: usize,
        s: *mut f32,
        pf: &mut ChunkPrefetch<'_>,
        pf_n: usize,
    );
    /// [`pv_body`] as its own function with the path's target features.
    #[allow(clippy::too_many_arguments)]
    unsafe fn pv<const MV: usize, const JB: usize>(
        v: *const u8,
        vs: usize,
        p: *const f32,
        mp: usize,
        cn: usize,
        ot: *mut f32,
        corr: *const f32,
        pf: &mut ChunkPrefetch<'_>,
        pf_n: usize,
    );
}

macro_rules! attn_tiles {
    (
        $ty:ty, $($feat:literal)?,
        [$(($mv:literal, $pb:literal)),*],
        small: $small:literal, qk_rows: $qmb:literal, kv: $kv:literal, pv_rows: $pmb:literal
    ) => {
        impl AttnTiles for $ty {
            const SMALL_M: usize = $small;
            const QK_ROWS: usize = $qmb;
            const PV_ROWS: usize = $pmb;
            #[inline(always)]
            unsafe fn item(s: &SeqRef<'_>, it: &Item, mv: usize) {
                match mv {
                    $($mv => item_cfg::<Self, $mv, $pb>(s, it),)*
                    _ => unreachable!("query block larger than the tile"),
                }
            }
            $(#[target_feature(enable = $feat)])?
            #[inline(never)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn qk<const MV: usize, const PB: usize>(
                k: *const u8,
                ks: usize,
                qt: *const f32,
                mp: usize,
                d: usize,
                s: *mut f32,
                pf: &mut ChunkPrefetch<'_>,
                pf_n: usize,
            ) {
                qk_body::<Self, MV, PB>(k, ks, qt, mp, d, s, pf, pf_n)
            }
            $(#[target_feature(enable = $feat)])?
            #[inline(never)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn pv<const MV: usize, const JB: usize>(
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
                pv_body::<Self, MV, JB>(v, vs, p, mp, cn, ot, corr, pf, pf_n)
            }
            $(#[target_feature(enable = $feat)])?
            #[inline(never)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn qk_rows(
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
                qk_t_rows::<Self, $qmb, $kv>(kt, kts, q, qs, d, s, ss, rows, pf, pf_n)
            }
            $(#[target_feature(enable = $feat)])?
            #[inline(never)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn pv_rows(
                dt: DType,
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
                match dt {
                    DType::BF16 => pv_small_rows::<Self, $pmb, DT_BF16>(
                        v, vs, p, ps, cn, o, os, corr, rows, dv, pf, pf_n,
                    ),
                    DType::F16 => pv_small_rows::<Self, $pmb, DT_F16>(
                        v, vs, p, ps, cn, o, os, corr, rows, dv, pf, pf_n,
                    ),
                    DType::F32 => pv_small_rows::<Self, $pmb, DT_F32>(
                        v, vs, p, ps, cn, o, os, corr, rows, dv, pf, pf_n,
                    ),
                }
            }
        }
    };
}

// Broadcast form: (MV query vectors, PB keys / JB dims per microkernel). Small form: up to
// `small` rows; score tiles of up to `qk_rows` rows × `kv` key vectors (`kv · L` =
// KV_CHUNK), output tiles of up to `pv_rows` rows × 4 vectors of dims. Accumulators +
// operands fit the register file (32 zmm / 16 ymm / 32 q).
#[cfg(target_arch = "x86_64")]
attn_tiles!(
    crate::simd::x86::Avx512,
    "avx512f,avx2,fma,f16c",
    [(1, 8), (2, 8), (3, 6), (4, 4)],
    small: 12, qk_rows: 8, kv: 2, pv_rows: 4
);
#[cfg(target_arch = "x86_64")]
attn_tiles!(
    crate::simd::x86::Avx2,
    "avx2,fma,f16c",
    [(1, 8), (2, 4), (3, 3), (4, 2)],
    small: 6, qk_rows: 2, kv: 4, pv_rows: 2
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
    small: 2, qk_rows: 2, kv: 8, pv_rows: 4
);
attn_tiles!(
    crate::simd::portable::Portable, ,
    [(1, 8), (2, 4), (3, 3), (4, 2)],
    small: 4, qk_rows: 2, kv: 4, pv_rows: 2
);

thread_local! {
    /// The thread's attention scratch, reused across items (taken out while in use).
    static ATTN_SCRATCH: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Widens `n` elements of `dt` at `src` to f32 at `dst`.
#[inline(always)]
pub(super) unsafe fn widen_row<S: Simd>(dt: DType, src: *const u8, dst: *mut f32, n: usize) {
    match dt {
        DType::BF16 => widen_row_dt::<S, DT_BF16>(dt, src, dst, n),
        DType::F16 => widen_row_dt::<S, DT_F16>(dt, src, dst, n),
        DType::F32 => widen_row_dt::<S, DT_F32>(dt, src, dst, n),
    }
}

/// [`widen_row`] for `dt` of code `DT`: whole vectors through [`load_widened`], the rest
/// element by element.
#[inline(always)]
unsafe fn widen_row_dt<S: Simd, const DT: u8>(dt: DType, src: *const u8, dst: *mut f32, n: usize) {
    let esz = elem_size(DT);
    let mut j = 0;
    while j + S::L <= n {
        S::store(dst.add(j), load_widened::<S, DT>(src.add(esz * j)));
        j += S::L;
    }
    if j < n {
        let bytes = std::slice::from_raw_parts(src, n * esz);
        while j < n {
            *dst.add(j) = load_f32(bytes, dt, j);
            j += 1;
        }
    }
}

/// Copies rows `rows` (positions, at most [`KV_CHUNK`]) of KV heads `heads` into
/// `scratch` as f32 (`[head][row][ds]`, widening f16/bf16), token by token (a token-major
/// cache is read sequentially), for the tiles that need f32 rows (f32 rows are read in
/// place).
#[inline(always)]
pub(super) unsafe fn copy_chunk<S: Simd>(
    kv: &KvView<'_>,
    rows: std::ops::Range<usize>,
    heads: std::ops::Range<usize>,
    scratch: *mut f32,
    ds: usize,
) {
    let lay = kv.layout;
    let base = kv.data.as_ptr();
    let esz = kv.dtype.size();
    for (p, t) in rows.enumerate() {
        for (h, kvh) in heads.clone().enumerate() {
            let src = base.add(lay.offset(t, kvh) * esz);
            widen_row::<S>(
                kv.dtype,
                src,
                scratch.add((h * KV_CHUNK + p) * ds),
                lay.head_dim,
            );
        }
    }
}

/// Row stride (f32) of the KV chunk scratch: `d` rounded up to 16, plus 16 so that
/// consecutive rows fall in different L1 sets.
pub(super) fn chunk_stride(d: usize) -> usize {
    d.div_ceil(16) * 16 + 16
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
    pub(super) d: usize,
    pub(super) heads: usize,
    pub(super) group: usize,
    /// Earlier positions `l = kv_len − n`.
    pub(super) l: usize,
    /// Heads of the item.
    pub(super) nh: usize,
    /// Query rows of the item (per head).
    pub(super) rows: usize,
    /// Positions any row of the item can see: `l + i_last + 1`.
    pub(super) kv_end: usize,
    /// First position some row of the item cannot see: `l + i_first + 1`.
    pub(super) first_masked: usize,
    /// Row stride of the chunk scratch.
    pub(super) ds: usize,
}

impl Geometry {
    pub(super) fn new(s: &SeqRef<'_>, it: &Item) -> Self {
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
    pub(super) fn query(&self, m: usize, kvh: usize) -> (usize, usize) {
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
    // f32 rows are read in place, also from a token-major cache whose rows of one head
    // are `kv_heads · d` apart (a power of two, one L1 set for a block's keys): the copy
    // that avoided those conflicts cost more (8-token calls ≈ 10 % slower with it).
    let (direct_k, direct_v) = (s.k.dtype == DType::F32, s.v.dtype == DType::F32);

    let mut buf = ATTN_SCRATCH.with(|x| x.take());
    let [qt, ot, sc, kc, vc, mrow, lsum, corr, ipos, rows_buf] = carve(
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
            mp * d,
        ],
    );
    // Oᵀ = 0 per head, per-row state.
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
    // Qᵀ (pre-scaled) per head: the rows are gathered contiguously (`rows_buf[m][d]`, zero
    // past the item's rows), then transposed block by block.
    std::ptr::write_bytes(rows_buf, 0, mp * d);
    for h in 0..nh {
        for mi in 0..g.rows {
            let (i, qh) = g.query(it.m0 + mi, it.h0 + h);
            let q = &s.q[(i * g.heads + qh) * d..(i * g.heads + qh + 1) * d];
            let dst = rows_buf.add(mi * d);
            for (j, &qj) in q.iter().enumerate() {
                *dst.add(j) = qj * s.shape.scale;
            }
        }
        transpose_rows::<S>(rows_buf, mp, d, qt.add(h * d * mp));
    }

    let mut c0 = 0;
    while c0 < g.kv_end {
        let cn = c.min(g.kv_end - c0);
        let next_n = c.min(g.kv_end - c0 - cn);
        // The next chunk's rows are prefetched inside this chunk's score tiles (a quarter)
        // and output tiles (the rest), at most one line per step of a tile (batches
        // between the tiles: the same or up to 5 % slower; half in the score tiles: 2–4 %
        // slower; none: level or 1–3 % slower), unless [`sw_prefetch`] leaves them to the
        // hardware prefetcher.
        let pf_n = if sw_prefetch(s) { next_n } else { 0 };
        let mut pf = ChunkPrefetch::new(&s.k, &s.v, c0 + cn, pf_n, it.h0, nh, false);
        let qk_lines = pf.lines() / 4;
        let qk_n = qk_lines.div_ceil(nh * cn.div_ceil(PB)).min(d);
        let batch = (pf.lines() - qk_lines)
            .div_ceil(nh * d.div_ceil(PB))
            .min(cn);
        if !direct_k {
            copy_chunk::<S>(&s.k, c0..c0 + cn, it.h0..it.h1, kc, ds);
        }
        if !direct_v {
            copy_chunk::<S>(&s.v, c0..c0 + cn, it.h0..it.h1, vc, ds);
        }
        for h in 0..nh {
            let (qt, ot) = (qt.add(h * d * mp), ot.add(h * d * mp));
            let (mrow, lsum) = (mrow.add(h * mp), lsum.add(h * mp));
            let (kp, ks) = if direct_k {
                let off = s.k.layout.offset(c0, it.h0 + h) * 4;
                (s.k.data.as_ptr().add(off), s.k.layout.token_stride * 4)
            } else {
                (kc.add(h * c * ds) as *const u8, ds * 4)
            };
            let (vp, vs) = if direct_v {
                let off = s.v.layout.offset(c0, it.h0 + h) * 4;
                (s.v.data.as_ptr().add(off), s.v.layout.token_stride * 4)
            } else {
                (vc.add(h * c * ds) as *const u8, ds * 4)
            };
            // Scores Sᵀ[p][m].
            // Keys past the last full block in blocks of 4, 2, 1: a single key is one FMA
            // latency chain over `d`.
            let mut p = 0;
            while p < cn {
                let (kr, sr) = (kp.add(p * ks), sc.add(p * mp));
                p += if p + PB <= cn {
                    S::qk::<MV, PB>(kr, ks, qt, mp, d, sr, &mut pf, qk_n);
                    PB
                } else if PB > 4 && p + 4 <= cn {
                    S::qk::<MV, 4>(kr, ks, qt, mp, d, sr, &mut pf, qk_n);
                    4
                } else if PB > 2 && p + 2 <= cn {
                    S::qk::<MV, 2>(kr, ks, qt, mp, d, sr, &mut pf, qk_n);
                    2
                } else {
                    S::qk::<MV, 1>(kr, ks, qt, mp, d, sr, &mut pf, qk_n);
                    1
                };
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
                for p in 0..cn {
                    let at = sc.add(p * mp + o);
                    S::store(at, S::exp(S::sub(S::load(at), mx)));
                }
                let sum = chunk_sum_rows::<S>(sc.add(o), mp, cn);
                S::store(lsum.add(o), S::fma(S::load(lsum.add(o)), cr, sum));
                S::store(mrow.add(o), mx);
                S::store(corr.add(o), cr);
            }
            // Oᵀ = Oᵀ · corr + Vᵀ P.
            let mut j = 0;
            while j < d {
                let (vr, or) = (vp.add(j * 4), ot.add(j * mp));
                j += if j + PB <= d {
                    S::pv::<MV, PB>(vr, vs, sc, mp, cn, or, corr, &mut pf, batch);
                    PB
                } else if PB > 4 && j + 4 <= d {
                    S::pv::<MV, 4>(vr, vs, sc, mp, cn, or, corr, &mut pf, batch);
                    4
                } else if PB > 2 && j + 2 <= d {
                    S::pv::<MV, 2>(vr, vs, sc, mp, cn, or, corr, &mut pf, batch);
                    2
                } else {
                    S::pv::<MV, 1>(vr, vs, sc, mp, cn, or, corr, &mut pf, batch);
                    1
                };
            }
        }
        pf.advance::<S>(usize::MAX);
        c0 += cn;
    }

    // Oᵀ back to rows (`rows_buf[m][d]`), then each row scaled by its 1/λ into `out`.
    let out = s.out.get();
    for h in 0..nh {
        transpose_cols::<S>(ot.add(h * d * mp), mp, d, rows_buf);
        for mi in 0..g.rows {
            let (i, qh) = g.query(it.m0 + mi, it.h0 + h);
            let inv = 1.0 / *lsum.add(h * mp + mi);
            let o = out.add((i * g.heads + qh) * d);
            let src = rows_buf.add(mi * d);
            for j in 0..d {
                *o.add(j) = *src.add(j) * inv;
            }
        }
    }
    ATTN_SCRATCH.with(|x| x.set(buf));
}

/// `dst[c · ds + r] = src[r · ss + c]` for `r < rows`, `c < cols`: full `L × L` blocks
/// through the path's transpose, the ragged edges element by element.
#[inline(always)]
unsafe fn transpose_matrix<S: Simd>(
    src: *const f32,
    ss: usize,
    dst: *mut f32,
    ds: usize,
    rows: usize,
    cols: usize,
) {
    let (rl, cl) = (rows / S::L * S::L, cols / S::L * S::L);
    for r in (0..rl).step_by(S::L) {
        for c in (0..cl).step_by(S::L) {
            S::transpose(src.add(r * ss + c), ss, dst.add(c * ds + r), ds);
        }
    }
    for r in 0..rows {
        let c0 = if r < rl { cl } else { 0 };
        for c in c0..cols {
            *dst.add(c * ds + r) = *src.add(r * ss + c);
        }
    }
}

/// `Qᵀ` from rows: `dst[j · mp + m] = src[m · d + j]` for `m < mp`, `j < d`.
#[inline(always)]
unsafe fn transpose_rows<S: Simd>(src: *const f32, mp: usize, d: usize, dst: *mut f32) {
    transpose_matrix::<S>(src, d, dst, mp, mp, d)
}

/// The inverse of [`transpose_rows`]: `dst[m · d + j] = src[j · mp + m]`.
#[inline(always)]
unsafe fn transpose_cols<S: Simd>(src: *const f32, mp: usize, d: usize, dst: *mut f32) {
    transpose_matrix::<S>(src, mp, dst, d, d, mp)
}

/// The canonical sum of one chunk's probabilities, for the rows of one vector: the
/// positions' values `e[p]` (`e[p] = 0` for `p ≥ cn`, `p < KV_CHUNK`) are added as a
/// halving tree — `e[p] += e[p + h]` for `h = 16, 8, 4, 2, 1` — which the small form
/// reproduces with keys in lanes (`small::chunk_sum`), so both give the same bits.
/// `e` rows are `mp` f32 apart.
#[inline(always)]
pub(super) unsafe fn chunk_sum_rows<S: Simd>(e: *const f32, mp: usize, cn: usize) -> S::V {
    const H: usize = KV_CHUNK / 2;
    let mut t = [S::zero(); H];
    for (p, tp) in t.iter_mut().enumerate() {
        // `x + 0 = x` exactly (probabilities are never −0): absent terms are skipped.
        *tp = match (p < cn, p + H < cn) {
            (true, true) => S::add(S::load(e.add(p * mp)), S::load(e.add((p + H) * mp))),
            (true, false) => S::load(e.add(p * mp)),
            _ => S::zero(),
        };
    }
    let mut h = H / 2;
    while h >= 1 {
        for p in 0..h {
            t[p] = S::add(t[p], t[p + h]);
        }
        h /= 2;
    }
    t[0]
}
