//! The named benchmark problems of issue #3, shared by the criterion benches
//! (`benches/kernels.rs`) and `specmoe bench kernels` (`src/kernel_bench.rs`).
//!
//! Shapes: Mixtral-8x7B expert projection (`14336 × 4096`, bf16) at 1, 8 and 64 tokens;
//! chunked verification attention (SpecMoEOff §5.1) with 32 query heads, 8 KV heads,
//! `d = 128`, a prefix of `l = 2048` and `n = 1` (decode) or `n = 8` (verification of 7
//! drafted tokens), over a batch of sequences whose KV cache is much larger than the
//! last-level cache (as in a real decode step).

use crate::attention::{attention_verify_batch_with, AttnShape, AttnTask, KvLayout, KvView};
use crate::matmul::{matmul_with, WeightMatrix};
use crate::{DType, Isa};

/// A matmul problem: `out[tokens, rows] = x[tokens, cols] · Wᵀ`, W stored as `dtype`.
#[derive(Clone, Debug)]
pub struct MatmulCase {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Tokens (activation rows).
    pub tokens: usize,
    /// Stored weight type.
    pub dtype: DType,
}

/// A batched attention problem: `batch` sequences, each `n` queries over `l + n` KV
/// positions (KV cache of `dtype`, token-major `[l + n, kv_heads, d]` as issue #3 names it,
/// or head-major `[kv_heads, l + n, d]` as the model stores it).
#[derive(Clone, Debug)]
pub struct AttnCase {
    /// Sequences.
    pub batch: usize,
    /// New tokens (queries) per sequence.
    pub n: usize,
    /// Earlier positions per sequence.
    pub l: usize,
    /// Query heads.
    pub heads: usize,
    /// KV heads.
    pub kv_heads: usize,
    /// Head dimension.
    pub d: usize,
    /// KV cache element type.
    pub dtype: DType,
    /// Head-major KV cache ([`KvLayout::head_major`]) instead of token-major.
    pub head_major: bool,
}

/// A named benchmark problem.
#[derive(Clone, Debug)]
pub enum Problem {
    /// [`crate::matmul::matmul`].
    Matmul(MatmulCase),
    /// [`crate::attention::attention_verify_batch`].
    Attention(AttnCase),
}

/// A problem with its name as used in reports.
#[derive(Clone, Debug)]
pub struct Workload {
    /// E.g. `matmul_bf16_t8`, `attn_verify_n8_l2048`, `attn_verify_n8_l2048_bf16`.
    pub name: String,
    /// The problem.
    pub problem: Problem,
}

impl Workload {
    /// The named problems: `matmul_bf16_t{1,8,64}` (14336 × 4096), then
    /// `attn_verify_n{1,8}_l2048` with f32 KV and `_bf16` / `_f16` KV variants (token-major
    /// KV cache), then `attn_verify_n{1,8}_l2048_hm` and `attn_verify_n{1,8}_l2048_bf16_hm`
    /// over the model's head-major cache.
    ///
    /// `attn_batch` sequences per attention call (8 makes the f32 KV 134 MB, far above
    /// the LLC; use ≥ 4 so that it stays DRAM-resident).
    pub fn named(attn_batch: usize) -> Vec<Workload> {
        let mut v = Vec::new();
        for tokens in [1, 8, 64] {
            v.push(Workload {
                name: format!("matmul_bf16_t{tokens}"),
                problem: Problem::Matmul(MatmulCase {
                    rows: 14336,
                    cols: 4096,
                    tokens,
                    dtype: DType::BF16,
                }),
            });
        }
        let layouts = [
            (false, [DType::F32, DType::BF16, DType::F16].as_slice()),
            (true, [DType::F32, DType::BF16].as_slice()),
        ];
        for (head_major, dtypes) in layouts {
            for &dtype in dtypes {
                for n in [1, 8] {
                    let mut suffix = String::new();
                    if dtype != DType::F32 {
                        suffix = format!("_{}", dtype.name());
                    }
                    if head_major {
                        suffix.push_str("_hm");
                    }
                    v.push(Workload {
                        name: format!("attn_verify_n{n}_l2048{suffix}"),
                        problem: Problem::Attention(AttnCase {
                            batch: attn_batch,
                            n,
                            l: 2048,
                            heads: 32,
                            kv_heads: 8,
                            d: 128,
                            dtype,
                            head_major,
                        }),
                    });
                }
            }
        }
        v
    }

    /// Human-readable shape, e.g. `14336x4096 bf16, 8 tokens`.
    pub fn shape(&self) -> String {
        match &self.problem {
            Problem::Matmul(m) => format!(
                "{}x{} {}, {} token{}",
                m.rows,
                m.cols,
                m.dtype,
                m.tokens,
                if m.tokens == 1 { "" } else { "s" }
            ),
            Problem::Attention(a) => format!(
                "batch {} x (n={} l={}) heads {}/{} d={} kv {} {}",
                a.batch,
                a.n,
                a.l,
                a.heads,
                a.kv_heads,
                a.d,
                a.dtype,
                if a.head_major {
                    "head-major"
                } else {
                    "token-major"
                }
            ),
        }
    }

    /// Bytes one call must move at least: the weights or the KV cache (read once), the
    /// activations/queries and the outputs.
    pub fn bytes(&self) -> f64 {
        match &self.problem {
            Problem::Matmul(m) => {
                (m.rows * m.cols * m.dtype.size() + 4 * m.tokens * (m.rows + m.cols)) as f64
            }
            Problem::Attention(a) => {
                let kv = 2 * (a.l + a.n) * a.kv_heads * a.d * a.dtype.size();
                let qo = 2 * a.n * a.heads * a.d * 4;
                (a.batch * (kv + qo)) as f64
            }
        }
    }

    /// Floating-point operations of one call (a multiply-add counts 2): `2·T·rows·cols`;
    /// attention `Σ_i 4·heads·d·(l + i + 1)` per sequence (QKᵀ and PV over the visible keys).
    pub fn flops(&self) -> f64 {
        match &self.problem {
            Problem::Matmul(m) => 2.0 * (m.tokens * m.rows * m.cols) as f64,
            Problem::Attention(a) => {
                let keys: usize = (0..a.n).map(|i| a.l + i + 1).sum();
                (a.batch * 4 * a.heads * a.d * keys) as f64
            }
        }
    }

    /// Allocates and fills the problem's buffers (deterministic pseudo-random data in
    /// `[-1, 1)`, so no denormals).
    pub fn prepare(&self) -> Prepared {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let mut stored = |dtype: DType, n: usize| {
            let mut buf = vec![0u8; n * dtype.size()];
            for i in 0..n {
                crate::dtype::store_f32(&mut buf, dtype, i, next() * 0.5);
            }
            buf
        };
        match &self.problem {
            Problem::Matmul(m) => {
                let w = stored(m.dtype, m.rows * m.cols);
                let x = (0..m.tokens * m.cols)
                    .map(|i| ((i % 17) as f32 - 8.0) * 0.05)
                    .collect();
                Prepared::Matmul {
                    case: m.clone(),
                    w,
                    x,
                    out: vec![0.0; m.tokens * m.rows],
                }
            }
            Problem::Attention(a) => {
                let kv_len = a.l + a.n;
                let elems = kv_len * a.kv_heads * a.d;
                let seqs = (0..a.batch)
                    .map(|_| {
                        let k = stored(a.dtype, elems);
                        let v = stored(a.dtype, elems);
                        let q = (0..a.n * a.heads * a.d)
                            .map(|i| ((i % 13) as f32 - 6.0) * 0.1)
                            .collect();
                        (q, k, v, vec![0.0; a.n * a.heads * a.d])
                    })
                    .collect();
                Prepared::Attention {
                    case: a.clone(),
                    seqs,
                }
            }
        }
    }
}

/// A problem's buffers, ready to run.
pub enum Prepared {
    /// Matmul buffers.
    Matmul {
        /// The problem.
        case: MatmulCase,
        /// Stored weights `[rows, cols]`.
        w: Vec<u8>,
        /// Activations `[tokens, cols]`.
        x: Vec<f32>,
        /// Output `[tokens, rows]`.
        out: Vec<f32>,
    },
    /// Attention buffers, one `(q, k, v, out)` per sequence.
    Attention {
        /// The problem.
        case: AttnCase,
        /// Per sequence: queries, keys, values, output.
        #[allow(clippy::type_complexity)]
        seqs: Vec<(Vec<f32>, Vec<u8>, Vec<u8>, Vec<f32>)>,
    },
}

impl Prepared {
    /// Runs the problem once on `isa`'s path in the current rayon pool.
    pub fn run(&mut self, isa: Isa) {
        match self {
            Prepared::Matmul { case, w, x, out } => {
                let wm = WeightMatrix::new(case.dtype, case.rows, case.cols, w);
                matmul_with(isa, x, case.tokens, &wm, out);
            }
            Prepared::Attention { case, seqs } => {
                let layout = if case.head_major {
                    KvLayout::head_major(case.kv_heads, case.d, case.l + case.n)
                } else {
                    KvLayout::token_major(case.kv_heads, case.d)
                };
                let shape = AttnShape {
                    n_queries: case.n,
                    n_heads: case.heads,
                    kv_len: case.l + case.n,
                    scale: 1.0 / (case.d as f32).sqrt(),
                };
                let mut tasks: Vec<AttnTask<'_>> = seqs
                    .iter_mut()
                    .map(|(q, k, v, out)| AttnTask {
                        q,
                        k: KvView {
                            dtype: case.dtype,
                            data: k,
                            layout,
                        },
                        v: KvView {
                            dtype: case.dtype,
                            data: v,
                            layout,
                        },
                        shape,
                        out,
                    })
                    .collect();
                attention_verify_batch_with(isa, &mut tasks);
            }
        }
    }
}
