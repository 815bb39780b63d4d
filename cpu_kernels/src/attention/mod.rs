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
//! heads' KV in chunks of [`KV_CHUNK`] positions (chunk boundaries at multiples of
//! `KV_CHUNK` from position 0) with an online (streaming) softmax. Two forms (`tiles.rs`,
//! `small.rs`, inner loops in `bodies.rs`):
//!
//! - broadcast form (`M` > the path's `SMALL_M`): the rows' queries are stored transposed
//!   and pre-scaled, `Qᵀ[d][m]`, so each key element `K[p][j]` is broadcast once and FMA'd
//!   against a vector of query rows (`Sᵀ[p][m] += K[p][j] · Qᵀ[j][m]`);
//!   `Oᵀ[j][m] = Oᵀ[j][m] · corr[m] + Σ_p V[p][j] · P[p][m]` likewise. f32 KV is read in
//!   place (head-major or token-major); f16/bf16 chunks are widened into a padded f32
//!   scratch, token by token;
//! - small form (few rows: decode, verification with a small group): the chunk's keys are
//!   transposed to `Kᵀ[d][KV_CHUNK]` (keys in lanes, one FMA chain over `j` per score;
//!   f16/bf16 widened block by block as they are transposed) and
//!   `O[m][:] += P[m][p] · V[p][:]` with dims in lanes, `V` read in place (f16/bf16
//!   widened in registers);
//! - the next chunk of a large cache is prefetched into L2 while this one is computed
//!   (`prefetch.rs`, which also says when);
//! - the causal mask is applied only to chunk positions past `l + i_first` (the trailing
//!   `n × n` block), by comparing each row's query index with `p − l`;
//! - per row: running max `μ`, running sum `λ`, correction `e^{μ_old − μ_new}`.
//!
//! # Batch invariance
//!
//! Every output row is a function of its query, its position and the KV only — not of `n`,
//! of the other rows, of the form or of the item's chunk lengths: both forms compute each
//! score as one FMA chain over `j = 0..d` from zero, each output element as
//! `o · corr` then one FMA chain over the chunk's positions, each chunk's probability sum
//! as the same halving tree over `KV_CHUNK` leaves (absent positions count as `+0`), and
//! `λ = λ · corr + sum` as one FMA. Positions a row cannot see add exact zeros. So query
//! `i` of an `n`-token call is bitwise equal to a 1-token call at position `l + i` on the
//! same path (tests/attention.rs checks it on every path).
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
    // Even a few µs of attention gains from the second thread (measured in-process, A/B
    // interleaved: running calls of < 2^15 products on the calling thread made a 1-token step
    // of the bundled target 4–7 % slower at 30 positions), so every call with two items or
    // more runs in parallel.
    if items.len() <= 1 || !crate::parallel::may_fork() {
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
        small::item_small::<S>(s, it);
    } else {
        S::item(s, it, rows.div_ceil(S::L));
    }
}

mod bodies;
mod prefetch;
mod small;
mod tiles;

use tiles::AttnTiles;

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
