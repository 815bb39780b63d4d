//! Chunked verification attention (SpecMoEOff, arXiv 2508.21706, §5.1).
//!
//! For one sequence with `n` new tokens: queries `[n, heads, d]` attend to its KV cache of
//! `kv_len = l + n` positions (the `l` earlier tokens plus the `n` new ones, already
//! written). Query `i` sits at position `l + i` and sees keys `0..=l + i`: the causal mask
//! matters only inside the trailing `n × n` block. GQA: query head `h` reads KV head
//! `h / (heads / kv_heads)`. `n = 1` is plain decode, `n = prompt length` is prefill,
//! `n = k + 1` is speculative verification: one kernel for all three.
//!
//! # Kernel structure (vectorised paths)
//!
//! Work items are (sequence, range of KV heads, block of query rows). The `M = n · group`
//! query rows sharing a KV head (query `i`, group member `g` → row `m = i · group + g`) are
//! cut into blocks of at most 64 (AVX-512) or 32 rows. An item makes ONE pass over its
//! heads' KV in chunks of [`KV_CHUNK`] positions with an online (streaming) softmax:
//!
//! - each chunk's K and V rows of all the item's heads are copied (f16/bf16 widened) into
//!   an f32 scratch with a padded row stride, token by token (a token-major cache is read
//!   sequentially), while the next chunk is prefetched into L2; the copy is shared by all
//!   query rows of all heads in the item;
//! - broadcast form (many rows): the rows' queries are stored transposed and pre-scaled,
//!   `Qᵀ[d][m]`, so each key element `K[p][j]` is broadcast once and FMA'd against a vector
//!   of query rows (`Sᵀ[p][m] += K[p][j] · Qᵀ[j][m]`): no transposes or horizontal sums;
//!   `Oᵀ[j][m] = Oᵀ[j][m] · corr[m] + Σ_p V[p][j] · P[p][m]` likewise;
//! - small form (`M` ≤ half a vector, e.g. decode): dot products along `d` (horizontal
//!   sums per `(row, key)`), `O[m][:] += P[m][p] · V[p][:]`;
//! - the causal mask is applied only to chunk positions past `l + i_first` (the trailing
//!   `n × n` block), by comparing each row's query index with `p − l`;
//! - per row: running max `μ`, running sum `λ`, correction `e^{μ_old − μ_new}`.
//!
//! Keys after the last query's position are never read (prefill skips the upper triangle
//! per block). Items run in parallel with rayon and write disjoint `(query, head)` rows of
//! the outputs.

use crate::dispatch::{active, usable, Isa};
use crate::dtype::{load_f32, DType};
use crate::simd::{aligned_f32, isa_entry, Line, Simd};
use crate::SendPtr;
use rayon::prelude::*;

/// Where element `(token t, kv head h, dim i)` of a KV buffer lives:
/// `t * token_stride + h * head_stride + i` (in elements, not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// Number of KV heads.
    pub kv_heads: usize,
    /// Head dimension `d`.
    pub head_dim: usize,
    /// Elements between consecutive tokens of one head.
    pub token_stride: usize,
    /// Elements between consecutive heads of one token.
    pub head_stride: usize,
}

impl KvLayout {
    /// Head-major layout `[kv_heads, capacity, d]`: each head's keys are contiguous.
    pub fn head_major(kv_heads: usize, head_dim: usize, capacity: usize) -> Self {
        KvLayout {
            kv_heads,
            head_dim,
            token_stride: head_dim,
            head_stride: capacity * head_dim,
        }
    }

    /// Token-major layout `[capacity, kv_heads, d]`.
    pub fn token_major(kv_heads: usize, head_dim: usize) -> Self {
        KvLayout {
            kv_heads,
            head_dim,
            token_stride: kv_heads * head_dim,
            head_stride: head_dim,
        }
    }

    /// Element offset of `(t, h, 0)`.
    #[inline]
    pub fn offset(&self, t: usize, h: usize) -> usize {
        t * self.token_stride + h * self.head_stride
    }
}

/// A read-only view of one sequence's keys or values for one layer.
#[derive(Clone, Copy, Debug)]
pub struct KvView<'a> {
    /// Element type of `data` (f32, f16 or bf16).
    pub dtype: DType,
    /// Little-endian elements addressed by `layout`.
    pub data: &'a [u8],
    /// Addressing of `data`.
    pub layout: KvLayout,
}

/// Shape of one sequence's attention problem.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    /// New tokens (queries) `n`.
    pub n_queries: usize,
    /// Query heads.
    pub n_heads: usize,
    /// KV positions including the new ones (`l + n`).
    pub kv_len: usize,
    /// Score scale, usually `1 / sqrt(d)`.
    pub scale: f32,
}

/// One sequence's attention: queries, its KV views and its output.
pub struct AttnTask<'a> {
    /// Queries f32 `[n, heads, d]`.
    pub q: &'a [f32],
    /// Keys.
    pub k: KvView<'a>,
    /// Values.
    pub v: KvView<'a>,
    /// Problem shape.
    pub shape: AttnShape,
    /// Output f32 `[n, heads, d]`.
    pub out: &'a mut [f32],
}

fn check(t: &AttnTask<'_>) {
    let s = &t.shape;
    let d = t.k.layout.head_dim;
    assert!(
        s.n_queries <= s.kv_len,
        "attention: more queries than KV positions"
    );
    assert!(
        t.k.layout.kv_heads > 0 && s.n_heads.is_multiple_of(t.k.layout.kv_heads),
        "attention: heads must be a multiple of kv_heads"
    );
    assert_eq!(
        t.q.len(),
        s.n_queries * s.n_heads * d,
        "attention: q must be [n, heads, d]"
    );
    assert_eq!(
        t.out.len(),
        t.q.len(),
        "attention: out must be [n, heads, d]"
    );
    assert_eq!(t.k.layout, t.v.layout, "attention: K and V layouts differ");
    if s.kv_len > 0 {
        let last = t.k.layout.offset(s.kv_len - 1, t.k.layout.kv_heads - 1) + d;
        assert!(
            last * t.k.dtype.size() <= t.k.data.len(),
            "attention: K buffer too short"
        );
        assert!(
            last * t.v.dtype.size() <= t.v.data.len(),
            "attention: V buffer too short"
        );
    }
}

/// KV positions per chunk of the streaming softmax.
pub const KV_CHUNK: usize = 32;

/// Attention for a batch of sequences on the active path, parallel over sequences × KV
/// heads × query blocks (rayon, current pool).
///
/// Each task's `out` (f32 `[n, heads, d]`) is overwritten. Panics on inconsistent shapes
/// (a caller bug): `q`/`out` not `[n, heads, d]`, `heads` not a multiple of `kv_heads`,
/// K and V layouts differing, buffers shorter than `kv_len` positions, `n > kv_len`.
pub fn attention_verify_batch(tasks: &mut [AttnTask<'_>]) {
    attention_verify_batch_with(active(), tasks)
}

/// [`attention_verify_batch`] on an explicit path (the portable path if the CPU lacks it).
pub fn attention_verify_batch_with(isa: Isa, tasks: &mut [AttnTask<'_>]) {
    for t in tasks.iter() {
        check(t);
    }
    let isa = usable(isa);
    let mblk = query_block(isa);
    let seqs: Vec<SeqRef<'_>> = tasks
        .iter_mut()
        .map(|t| SeqRef {
            q: t.q,
            k: t.k,
            v: t.v,
            shape: t.shape,
            out: SendPtr(t.out.as_mut_ptr()),
        })
        .collect();
    // Work items: (sequence, range of KV heads, block of query rows). One item reads its
    // heads' KV once, chunk by chunk, copying every head's rows of a chunk in one sweep (a
    // token-major cache is then read sequentially). Heads are split into more groups only
    // when there are too few items to keep every thread busy.
    let threads = rayon::current_num_threads();
    let mut base_items = 0;
    for s in &seqs {
        let rows = s.shape.n_queries * (s.shape.n_heads / s.k.layout.kv_heads);
        if rows > 0 && s.k.layout.head_dim > 0 {
            base_items += rows.div_ceil(mblk);
        }
    }
    let groups_wanted = if base_items == 0 {
        1
    } else {
        (2 * threads).div_ceil(base_items)
    };
    let mut items = Vec::new();
    for (si, s) in seqs.iter().enumerate() {
        let kvh = s.k.layout.kv_heads;
        let rows = s.shape.n_queries * (s.shape.n_heads / kvh);
        if rows == 0 || s.k.layout.head_dim == 0 {
            continue;
        }
        let nblk = rows.div_ceil(mblk);
        let size = rows.div_ceil(nblk);
        let groups = groups_wanted.clamp(1, kvh);
        let per = kvh.div_ceil(groups);
        for h0 in (0..kvh).step_by(per) {
            for b in 0..nblk {
                let m0 = b * size;
                items.push(Item {
                    seq: si,
                    h0,
                    h1: (h0 + per).min(kvh),
                    m0,
                    m1: (m0 + size).min(rows),
                });
            }
        }
    }
    let run = |it: &Item| {
        // SAFETY: `check` validated every task's shapes and buffer lengths; the item writes
        // only the output rows `(i, h)` of its own sequence, KV heads and query rows, which
        // are disjoint across items; `seqs` borrows the tasks for the whole call.
        unsafe { attn_item(isa, &seqs[it.seq], it) }
    };
    if items.len() <= 1 || rayon::current_num_threads() == 1 {
        items.iter().for_each(run);
    } else {
        items.par_iter().for_each(run);
    }
}

/// One sequence's attention on an explicit path (parallel over KV heads × query blocks).
///
/// Panics on inconsistent shapes, as [`attention_verify_batch`].
pub fn attention_verify_with(isa: Isa, t: &mut AttnTask<'_>) {
    attention_verify_batch_with(isa, std::slice::from_mut(t))
}

/// Maximum query rows (query × group member) per work item on `isa`'s path.
fn query_block(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 64,
        _ => 32,
    }
}

/// A sequence's inputs as shared by the work items (output as a raw pointer).
pub(crate) struct SeqRef<'a> {
    q: &'a [f32],
    k: KvView<'a>,
    v: KvView<'a>,
    shape: AttnShape,
    out: SendPtr,
}

/// Query rows `m0..m1` (of `n · group`, per KV head) of KV heads `h0..h1` of sequence `seq`.
pub(crate) struct Item {
    seq: usize,
    h0: usize,
    h1: usize,
    m0: usize,
    m1: usize,
}

isa_entry!(fn attn_item => item_generic(s: &SeqRef<'_>, it: &Item));

#[inline(always)]
unsafe fn item_generic<S: AttnTiles>(s: &SeqRef<'_>, it: &Item) {
    let rows = it.m1 - it.m0;
    if rows <= S::SMALL_M {
        S::item_small(s, it, rows);
    } else {
        S::item(s, it, rows.div_ceil(S::L));
    }
}

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
unsafe fn widen_row<S: Simd>(dt: DType, src: *const u8, dst: *mut f32, n: usize) {
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
unsafe fn copy_chunk<S: Simd>(
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
fn chunk_stride(d: usize) -> usize {
    d.div_ceil(16) * 16 + 16
}

/// Prefetches KV row `t` of head `h` into L2.
#[inline(always)]
unsafe fn prefetch_row<S: Simd>(kv: &KvView<'_>, t: usize, h: usize) {
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
unsafe fn carve<const N: usize>(buf: &mut Vec<Line>, parts: [usize; N]) -> [*mut f32; N] {
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
struct Geometry {
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
unsafe fn item_cfg<S: AttnTiles, const MV: usize, const PB: usize>(s: &SeqRef<'_>, it: &Item) {
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
unsafe fn item_small<S: AttnTiles, const M: usize, const PB: usize, const JV: usize>(
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

/// `s[m][b] = Σ_j K[b][j] · Q[m][j]` for `PB` keys (rows `ks` f32 apart) and `M` query rows
/// (`qs` apart), both `dv` vectors long (zero-padded); `s` rows are `ss` apart.
#[inline(always)]
unsafe fn dot_body<S: Simd, const M: usize, const PB: usize>(
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
unsafe fn pv_small_body<S: Simd, const M: usize, const JV: usize>(
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
unsafe fn qk_body<S: Simd, const MV: usize, const PB: usize>(
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
unsafe fn pv_body<S: Simd, const MV: usize, const JB: usize>(
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

/// Scalar reference: per query and head, scores → softmax → weighted sum of values (two
/// passes over the visible keys, no chunking). Used by the conformance tests.
///
/// Panics on inconsistent shapes only through slice indexing; call after validating.
pub fn attention_scalar(t: &mut AttnTask<'_>) {
    let s = t.shape;
    let lay = t.k.layout;
    let d = lay.head_dim;
    let group = s.n_heads / lay.kv_heads;
    let l = s.kv_len - s.n_queries;
    let mut scores = vec![0.0f32; s.kv_len];
    for i in 0..s.n_queries {
        let visible = l + i + 1;
        for h in 0..s.n_heads {
            let kvh = h / group;
            let q = &t.q[(i * s.n_heads + h) * d..(i * s.n_heads + h + 1) * d];
            let mut max = f32::NEG_INFINITY;
            for (p, sc) in scores[..visible].iter_mut().enumerate() {
                let base = lay.offset(p, kvh);
                let mut dot = 0.0f32;
                for (j, qj) in q.iter().enumerate() {
                    dot += qj * load_f32(t.k.data, t.k.dtype, base + j);
                }
                *sc = dot * s.scale;
                max = max.max(*sc);
            }
            let mut sum = 0.0f32;
            for sc in scores[..visible].iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            let o = &mut t.out[(i * s.n_heads + h) * d..(i * s.n_heads + h + 1) * d];
            o.fill(0.0);
            for (p, sc) in scores[..visible].iter().enumerate() {
                let base = lay.offset(p, kvh);
                let w = sc / sum;
                for (j, oj) in o.iter_mut().enumerate() {
                    *oj += w * load_f32(t.v.data, t.v.dtype, base + j);
                }
            }
        }
    }
}
