//! Chunked verification attention (SpecMoEOff, arXiv 2508.21706, §5.1).
//!
//! For one sequence with `n` new tokens: queries `[n, heads, d]` attend to its KV cache of
//! `kv_len = l + n` positions (the `l` earlier tokens plus the `n` new ones, already
//! written). Query `i` sits at position `l + i` and sees keys `0..=l + i`: the causal mask
//! matters only inside the trailing `n × n` block. GQA: query head `h` reads KV head
//! `h / (heads / kv_heads)`. `n = 1` is plain decode, `n = prompt length` is prefill,
//! `n = k + 1` is speculative verification: one kernel for all three.

use crate::dispatch::{active, Isa};
use crate::dtype::{load_f32, DType};
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
        t.k.layout.kv_heads > 0 && s.n_heads % t.k.layout.kv_heads == 0,
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

/// Attention for a batch of sequences on the active path, parallel over sequences.
///
/// Panics on inconsistent shapes (a caller bug).
pub fn attention_verify_batch(tasks: &mut [AttnTask<'_>]) {
    attention_verify_batch_with(active(), tasks)
}

/// [`attention_verify_batch`] on an explicit path.
pub fn attention_verify_batch_with(isa: Isa, tasks: &mut [AttnTask<'_>]) {
    tasks
        .par_iter_mut()
        .for_each(|t| attention_verify_with(isa, t));
}

/// One sequence's attention on an explicit path.
pub fn attention_verify_with(isa: Isa, t: &mut AttnTask<'_>) {
    check(t);
    let _ = isa; // vectorised paths plug in here
    attention_scalar(t);
}

/// Scalar reference: per query and head, scores → softmax → weighted sum of values.
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
