//! The model: one forward step over a batch of sequences, each with its own block of new
//! tokens (prompt at prefill, one token at decode, `k+1` at speculative verification).
//!
//! Per layer: RMSNorm → attention (all tokens of the step through each projection at once,
//! chunked verification attention per sequence) → residual → RMSNorm → MLP or MoE (all
//! tokens routed together, each expert run once on its tokens) → residual. Final RMSNorm
//! and the LM head only on the rows whose logits are asked for.

mod attention;
pub mod head;
mod kv_cache;
mod moe;
pub mod rope;
pub mod weights;

pub use kv_cache::KvCache;
pub use moe::Routing;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensor::TensorStore;
use specmoe_cpu_kernels::matmul::matmul;
use specmoe_cpu_kernels::norm::rms_norm_inplace;
use specmoe_cpu_kernels::rope::RopeTable;
use specmoe_cpu_kernels::DType;
use std::path::Path;
use weights::ModelWeights;

/// Which rows of a sequence's block get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Every new token (the `logits` command, verification).
    All,
    /// The last `n` new tokens (`Last(1)` for prefill and decode).
    Last(usize),
}

/// One sequence's share of a forward step.
pub struct SeqStep<'a> {
    /// New tokens of this sequence (at least one).
    pub tokens: &'a [u32],
    /// Its KV cache; the step appends `tokens.len()` positions.
    pub cache: &'a mut KvCache,
    /// Rows to compute logits for.
    pub logits: LogitRows,
}

/// Result of [`Model::forward`].
#[derive(Debug, Default)]
pub struct StepOutput {
    /// Per sequence, f32 `[rows, vocab]` row-major for the rows asked for.
    pub logits: Vec<Vec<f32>>,
    /// Per MoE layer (when recorded): `(layer index, routing of every token of the step,
    /// sequences concatenated in order)`.
    pub routing: Vec<(usize, Routing)>,
    /// Bytes of weights read by the step (every matrix once per use).
    pub weight_bytes: u64,
}

/// A loaded model: config, weights in their stored dtype, RoPE table.
pub struct Model {
    /// Normalised config.
    pub cfg: ModelConfig,
    /// Weights.
    pub weights: ModelWeights,
    inv_freq: Vec<f32>,
    kv_dtype: DType,
    /// Total bytes of the weight tensors.
    pub weight_bytes: usize,
    head_subset: Option<head::HeadSubset>,
}

impl Model {
    /// Builds a model from a config and its tensors; the KV cache holds `kv_dtype`.
    ///
    /// Errors: a tensor missing or of the wrong shape (see [`ModelWeights::load`]).
    pub fn from_store(cfg: ModelConfig, store: &TensorStore, kv_dtype: DType) -> Result<Self> {
        let weights = ModelWeights::load(&cfg, store)?;
        let inv_freq = rope::inv_freq(cfg.head_dim, cfg.rope_theta, &cfg.rope_scaling);
        Ok(Model {
            cfg,
            weights,
            inv_freq,
            kv_dtype,
            weight_bytes: store.total_bytes(),
            head_subset: None,
        })
    }

    /// Restricts the LM head to the token ids `ids` (a draft model's frequent tokens, see
    /// [`head::HeadSubset`]); every other logit is then `-inf`. `None` restores the full head.
    ///
    /// Errors: `ids` empty, an id outside the vocabulary or listed twice.
    pub fn restrict_head(&mut self, ids: Option<&[u32]>) -> Result<()> {
        self.head_subset = match ids {
            Some(ids) => Some(head::HeadSubset::new(&self.weights.lm_head.matrix(), ids)?),
            None => None,
        };
        Ok(())
    }

    /// Token ids the LM head computes when it is restricted ([`Model::restrict_head`]).
    pub fn head_ids(&self) -> Option<&[u32]> {
        self.head_subset.as_ref().map(|h| h.ids())
    }

    /// Loads `dir/config.json` and its safetensors (see [`crate::checkpoint::load_tensors`]).
    pub fn load(dir: &Path, kv_dtype: DType) -> Result<Self> {
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let store = crate::checkpoint::load_tensors(dir)?;
        Self::from_store(cfg, &store, kv_dtype)
    }

    /// A fresh, empty KV cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(
            self.cfg.num_layers,
            self.cfg.num_kv_heads,
            self.cfg.head_dim,
            self.kv_dtype,
        )
    }

    /// Maximum positions of a sequence (`max_position_embeddings`).
    pub fn context_len(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    fn check_step(&self, s: &SeqStep<'_>) -> Result<()> {
        let n = s.tokens.len();
        if n == 0 {
            return Err(Error::Input(
                "a forward step needs at least one token per sequence".into(),
            ));
        }
        if let Some(&bad) = s
            .tokens
            .iter()
            .find(|&&t| t as usize >= self.cfg.vocab_size)
        {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.cfg.vocab_size
            )));
        }
        let total = s.cache.len() + n;
        if total > self.context_len() {
            return Err(Error::Input(format!(
                "sequence of {total} tokens exceeds the model's context of {} (max_position_embeddings)",
                self.context_len()
            )));
        }
        if let Some(w) = self.cfg.sliding_window {
            if total > w {
                return Err(Error::Unsupported(format!(
                    "sliding-window attention: sequence of {total} tokens is longer than the window of {w}"
                )));
            }
        }
        if let LogitRows::Last(r) = s.logits {
            if r > n {
                return Err(Error::Input(format!(
                    "asked for logits of {r} rows of a {n}-token block"
                )));
            }
        }
        Ok(())
    }

    /// One forward step over `steps` (see the module docs). Appends each sequence's new
    /// tokens to its KV cache and returns the requested logits.
    ///
    /// Errors: an empty block, a token id outside the vocabulary, a sequence beyond the
    /// context; nothing is written to any cache in that case.
    pub fn forward(&self, steps: &mut [SeqStep<'_>], record_routing: bool) -> Result<StepOutput> {
        for s in steps.iter() {
            self.check_step(s)?;
        }
        let cfg = &self.cfg;
        let hid = cfg.hidden_size;
        let t_total: usize = steps.iter().map(|s| s.tokens.len()).sum();
        let starts: Vec<usize> = steps.iter().map(|s| s.cache.len()).collect();
        for s in steps.iter_mut() {
            let want = s.cache.len() + s.tokens.len();
            s.cache.reserve(want);
        }
        let positions: Vec<usize> = steps
            .iter()
            .zip(&starts)
            .flat_map(|(s, &st)| st..st + s.tokens.len())
            .collect();
        let rope = RopeTable::new(&positions, &self.inv_freq, 1.0);
        let mut out = StepOutput::default();
        let embed = self.weights.embed.matrix();
        let mut x = vec![0.0f32; t_total * hid];
        for (i, &tok) in steps.iter().flat_map(|s| s.tokens.iter()).enumerate() {
            embed.row_to_f32(tok as usize, &mut x[i * hid..(i + 1) * hid]);
        }
        for (li, lw) in self.weights.layers.iter().enumerate() {
            let mut h = x.clone();
            rms_norm_inplace(&mut h, &lw.input_norm, cfg.rms_norm_eps);
            let a = attention::attention_block(
                self,
                &lw.attn,
                li,
                &h,
                steps,
                &starts,
                &rope,
                &mut out.weight_bytes,
            );
            for (xv, av) in x.iter_mut().zip(&a) {
                *xv += av;
            }
            h.copy_from_slice(&x);
            rms_norm_inplace(&mut h, &lw.post_attn_norm, cfg.rms_norm_eps);
            let (f, routing) = moe::ffn_block(&lw.ffn, &h, t_total, hid, &mut out.weight_bytes);
            for (xv, fv) in x.iter_mut().zip(&f) {
                *xv += fv;
            }
            if let (true, Some(r)) = (record_routing, routing) {
                out.routing.push((li, r));
            }
        }
        for (s, &start) in steps.iter_mut().zip(&starts) {
            s.cache.set_len(start + s.tokens.len());
        }
        // Final norm and LM head on the requested rows only.
        let mut rows = Vec::new();
        let mut off = 0;
        for s in steps.iter() {
            let n = s.tokens.len();
            let r = match s.logits {
                LogitRows::All => n,
                LogitRows::Last(r) => r,
            };
            rows.extend(off + n - r..off + n);
            off += n;
        }
        let mut hsel = Vec::with_capacity(rows.len() * hid);
        for &r in &rows {
            hsel.extend_from_slice(&x[r * hid..(r + 1) * hid]);
        }
        rms_norm_inplace(&mut hsel, &self.weights.norm, cfg.rms_norm_eps);
        let head = self.weights.lm_head.matrix();
        let logits = match &self.head_subset {
            Some(sub) => {
                out.weight_bytes += sub.bytes() as u64;
                sub.logits(&hsel, rows.len(), cfg.vocab_size)
            }
            None => {
                let mut logits = vec![0.0f32; rows.len() * cfg.vocab_size];
                if !rows.is_empty() {
                    matmul(&hsel, rows.len(), &head, &mut logits);
                    out.weight_bytes += head.bytes() as u64;
                }
                logits
            }
        };
        if steps.len() == 1 {
            // One sequence (batch-1 decode, verification, drafting): its rows are all of them.
            out.logits.push(logits);
            return Ok(out);
        }
        let mut at = 0;
        for s in steps.iter() {
            let r = match s.logits {
                LogitRows::All => s.tokens.len(),
                LogitRows::Last(r) => r,
            };
            out.logits
                .push(logits[at * cfg.vocab_size..(at + r) * cfg.vocab_size].to_vec());
            at += r;
        }
        Ok(out)
    }
}
