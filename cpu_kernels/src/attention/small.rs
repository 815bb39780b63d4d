//! The small form of a work item: few query rows (decode, or verification with a small GQA
//! group), where the broadcast form would leave most lanes idle. Scores put keys in lanes
//! (the chunk's keys transposed to `Kᵀ[d][KV_CHUNK]`), outputs put dims in lanes
//! (`O[m][:] += P[m][p] · V[p][:]`). Every score, probability, running sum and output
//! element goes through the same roundings as in the broadcast form ([`super::tiles`]), so
//! the two forms give bitwise identical rows and the form can follow `M`.

use super::bodies::load_widened;
use super::prefetch::{sw_prefetch, tile_calls, ChunkPrefetch, SmallSpread};
use super::tiles::{carve, chunk_stride, copy_chunk, AttnTiles, Geometry};
use super::*;
use crate::dtype::{elem_size, DT_BF16, DT_F16, DT_F32};

thread_local! {
    /// The thread's small-form scratch, reused across items (taken out while in use).
    static SMALL_SCRATCH: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Transposes rows `c0..c0 + cn` (`cn ≤ KV_CHUNK`) of KV head `kvh` of `kv` (rows of dtype
/// code `DT`, [`crate::dtype::DT_F32`], …) into `kt[j · KV_CHUNK + p]` as f32. Full
/// `L × L` blocks of f32 rows go through the path's transpose in place; a last partial
/// block of rows, and rows of another dtype, are first loaded (widened: one widening per
/// element, no chunk-sized f32 copy) into a staging block, zero past row `cn`; dims past
/// the last multiple of `L` are moved one by one. Before each `L × L` block (each block
/// of rows when `d < L`), `per_block` lines of `pf` are prefetched.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn transpose_chunk<S: Simd, const DT: u8>(
    kv: &KvView<'_>,
    c0: usize,
    cn: usize,
    kvh: usize,
    kt: *mut f32,
    pf: &mut ChunkPrefetch<'_>,
    per_block: usize,
) {
    let (c, l) = (KV_CHUNK, S::L);
    let lay = kv.layout;
    let d = lay.head_dim;
    let dl = d / l * l;
    let esz = elem_size(DT);
    let row = |t: usize| kv.data.as_ptr().add(lay.offset(t, kvh) * esz);
    let mut stage = std::mem::MaybeUninit::<[f32; 256]>::uninit();
    let stage = stage.as_mut_ptr() as *mut f32;
    let mut p = 0;
    while p < cn {
        let rows = l.min(cn - p);
        if dl == 0 {
            pf.advance::<S>(per_block);
        }
        let mut j = 0;
        while j < dl {
            pf.advance::<S>(per_block);
            if rows == l && DT == DT_F32 {
                let src = (row(c0 + p) as *const f32).add(j);
                S::transpose(src, lay.token_stride, kt.add(j * c + p), c);
            } else {
                for r in 0..l {
                    let x = if r < rows {
                        load_widened::<S, DT>(row(c0 + p + r).add(j * esz))
                    } else {
                        S::zero()
                    };
                    S::store(stage.add(r * l), x);
                }
                S::transpose(stage, l, kt.add(j * c + p), c);
            }
            j += l;
        }
        for jj in dl..d {
            for r in 0..rows {
                let at = lay.offset(c0 + p + r, kvh) + jj;
                *kt.add(jj * c + p + r) = load_f32(kv.data, kv.dtype, at);
            }
        }
        p += l;
    }
}

/// The canonical chunk sum of one row's probabilities `e[0..KV_CHUNK]` (zero past the
/// chunk's end): `e[p] += e[p + h]` for `h = 16, 8, 4, 2, 1`, as
/// [`super::tiles::chunk_sum_rows`] does with rows in lanes.
#[inline(always)]
unsafe fn chunk_sum<S: Simd>(e: *const f32) -> f32 {
    let mut t = [0.0f32; KV_CHUNK];
    std::ptr::copy_nonoverlapping(e, t.as_mut_ptr(), KV_CHUNK);
    let t = t.as_mut_ptr();
    let mut h = KV_CHUNK / 2;
    while h >= S::L {
        let mut p = 0;
        while p < h {
            S::store(t.add(p), S::add(S::load(t.add(p)), S::load(t.add(p + h))));
            p += S::L;
        }
        h /= 2;
    }
    while h >= 1 {
        for p in 0..h {
            *t.add(p) += *t.add(p + h);
        }
        h /= 2;
    }
    *t
}

/// One work item in the small form (`M = rows ≤ SMALL_M`). Per chunk and head: `Kᵀ` (read
/// in place when f32, else widened block by block as it is transposed), scores `S[m][p]`
/// (`M × KV_CHUNK`, positions past the chunk or the row's query masked to −∞), online
/// softmax per row, then
/// `O[m][:] = O[m][:] · corr[m] + Σ_p P[m][p] · V[p][:]` with `V` read in place when `d`
/// is a multiple of `L`, 2-byte rows widened in registers (else widened into a zero-padded
/// scratch).
#[inline(always)]
pub(super) unsafe fn item_small<S: AttnTiles>(s: &SeqRef<'_>, it: &Item) {
    let g = Geometry::new(s, it);
    let (d, nh, rows) = (g.d, g.nh, g.rows);
    let c = KV_CHUNK;
    let dp = d.div_ceil(S::L) * S::L;
    let dv = dp / S::L;
    let mp = rows.div_ceil(S::L) * S::L;
    let ds = chunk_stride(d).max(dp);
    // V rows are read in place (2-byte ones widened in registers) when `d` is a multiple
    // of `L`; else widened into a zero-padded scratch.
    let vdirect = d % S::L == 0;
    let vsz = s.v.dtype.size();
    let ts = s.k.layout.token_stride;

    let mut buf = SMALL_SCRATCH.with(|x| x.take());
    let [qs, os, sc, kt, vc, mrow, lsum, mnew, csum, corr] = carve(
        &mut buf,
        [
            nh * rows * d,
            nh * rows * dp,
            rows * c,
            d * c,
            if vdirect { 0 } else { c * ds },
            nh * mp,
            nh * mp,
            mp,
            mp,
            mp,
        ],
    );
    std::ptr::write_bytes(os, 0, nh * rows * dp);
    if !vdirect {
        std::ptr::write_bytes(vc, 0, c * ds);
    }
    for x in 0..nh * mp {
        *mrow.add(x) = if x % mp < rows {
            f32::NEG_INFINITY
        } else {
            0.0
        };
        *lsum.add(x) = 0.0;
    }
    for x in 0..mp {
        *mnew.add(x) = 0.0;
        *csum.add(x) = 0.0;
    }
    for h in 0..nh {
        for mi in 0..rows {
            let (i, qh) = g.query(it.m0 + mi, it.h0 + h);
            let q = &s.q[(i * g.heads + qh) * d..(i * g.heads + qh + 1) * d];
            for (j, &qj) in q.iter().enumerate() {
                *qs.add((h * rows + mi) * d + j) = qj * s.shape.scale;
            }
        }
    }
    let vbase = s.v.data.as_ptr();

    let mut c0 = 0;
    while c0 < g.kv_end {
        let cn = c.min(g.kv_end - c0);
        let next_n = c.min(g.kv_end - c0 - cn);
        // The next chunk's rows (unless [`sw_prefetch`] leaves them to the hardware
        // prefetcher), spread over each head's transposed blocks and tiles
        // ([`SmallSpread`]; against three batches per head, f32 decode 12–17 % faster
        // token-major and 6–12 % head-major, one or two threads).
        let pf_n = if sw_prefetch(s) { next_n } else { 0 };
        let mut pf = ChunkPrefetch::new(&s.k, &s.v, c0 + cn, pf_n, it.h0, nh, true);
        let spread = SmallSpread::new(
            pf.lines().div_ceil(nh),
            tile_calls(rows, S::QK_ROWS),
            d,
            tile_calls(rows, S::PV_ROWS) * tile_calls(dv, 4),
            cn,
            cn.div_ceil(S::L) * (d / S::L).max(1),
        );
        for h in 0..nh {
            let kvh = it.h0 + h;
            let (qs, os) = (qs.add(h * rows * d), os.add(h * rows * dp));
            let (mrow, lsum) = (mrow.add(h * mp), lsum.add(h * mp));
            // Kᵀ of the chunk.
            let (kvw, pb) = (&s.k, spread.per_block);
            match s.k.dtype {
                DType::F32 => transpose_chunk::<S, DT_F32>(kvw, c0, cn, kvh, kt, &mut pf, pb),
                DType::F16 => transpose_chunk::<S, DT_F16>(kvw, c0, cn, kvh, kt, &mut pf, pb),
                DType::BF16 => transpose_chunk::<S, DT_BF16>(kvw, c0, cn, kvh, kt, &mut pf, pb),
            }
            let (vt, vp, vs) = if vdirect {
                let at = vbase.add(s.v.layout.offset(c0, kvh) * vsz);
                (s.v.dtype, at, ts * vsz)
            } else {
                copy_chunk::<S>(&s.v, c0..c0 + cn, kvh..kvh + 1, vc, ds);
                (DType::F32, vc as *const u8, ds * 4)
            };
            // Scores S[m][p]; positions past the chunk, and past each row's query, → −∞.
            S::qk_rows(kt, c, qs, d, d, sc, c, rows, &mut pf, spread.qk_n);
            for mi in 0..rows {
                let row = sc.add(mi * c);
                for p in cn..c {
                    *row.add(p) = f32::NEG_INFINITY;
                }
                let i = (it.m0 + mi) / g.group;
                for p in g.first_masked.max(c0)..c0 + cn {
                    if p - g.l > i {
                        *row.add(p - c0) = f32::NEG_INFINITY;
                    }
                }
            }
            // Online softmax: per row max and probabilities, then per vector of rows the
            // correction and running sum (the broadcast form's exact operations).
            for mi in 0..rows {
                let row = sc.add(mi * c);
                let mut vmax = S::load(row);
                let mut p = S::L;
                while p < c {
                    vmax = S::max(vmax, S::load(row.add(p)));
                    p += S::L;
                }
                let mx = (*mrow.add(mi)).max(S::hmax(vmax));
                let m = S::splat(mx);
                let mut p = 0;
                while p < c {
                    S::store(row.add(p), S::exp(S::sub(S::load(row.add(p)), m)));
                    p += S::L;
                }
                *mnew.add(mi) = mx;
                *csum.add(mi) = chunk_sum::<S>(row);
            }
            let mut o = 0;
            while o < mp {
                let (old, new) = (S::load(mrow.add(o)), S::load(mnew.add(o)));
                let cr = S::exp(S::sub(old, new));
                S::store(
                    lsum.add(o),
                    S::fma(S::load(lsum.add(o)), cr, S::load(csum.add(o))),
                );
                S::store(mrow.add(o), new);
                S::store(corr.add(o), cr);
                o += S::L;
            }
            let pv_n = spread.pv_n;
            S::pv_rows(vt, vp, vs, sc, c, cn, os, dp, corr, rows, dv, &mut pf, pv_n);
        }
        pf.advance::<S>(usize::MAX);
        c0 += cn;
    }

    let out = s.out.get();
    for h in 0..nh {
        for mi in 0..rows {
            let (i, qh) = g.query(it.m0 + mi, it.h0 + h);
            let inv = 1.0 / *lsum.add(h * mp + mi);
            let o = out.add((i * g.heads + qh) * d);
            for j in 0..d {
                *o.add(j) = *os.add((h * rows + mi) * dp + j) * inv;
            }
        }
    }
    SMALL_SCRATCH.with(|x| x.set(buf));
}
