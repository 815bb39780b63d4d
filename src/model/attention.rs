//! The attention block shared by every architecture: q/k/v projections (+bias), optional
//! q/k RMSNorm, RoPE, KV-cache append, chunked verification attention over each sequence's
//! cache, o projection. Tokens of all sequences of a step go through each projection
//! together, so each weight is read once per step.

use super::weights::{AttnWeights, Linear};
use super::{KvCache, Model, SeqStep};
use crate::config::QkNorm;
use specmoe_cpu_kernels::attention::{attention_verify_batch, AttnShape, AttnTask};
use specmoe_cpu_kernels::matmul::matmul;
use specmoe_cpu_kernels::norm::rms_norm_inplace;
use specmoe_cpu_kernels::rope::rope_inplace;

/// `x[tokens, in] · Wᵀ + b` → `[tokens, out]`; adds the weight bytes read to `bytes`.
pub(crate) fn linear(x: &[f32], tokens: usize, lin: &Linear, bytes: &mut u64) -> Vec<f32> {
    let w = lin.weight.matrix();
    let mut out = vec![0.0f32; tokens * w.rows];
    matmul(x, tokens, &w, &mut out);
    *bytes += w.bytes() as u64;
    if let Some(b) = &lin.bias {
        for row in out.chunks_exact_mut(w.rows) {
            for (o, bb) in row.iter_mut().zip(b) {
                *o += bb;
            }
        }
    }
    out
}

/// Runs attention of `layer` of `model` for the normed hidden states `h` (`[T, hidden]`, the tokens of
/// all `steps` concatenated); `starts[i]` is sequence i's cache length before this step.
/// Appends the step's keys/values to each cache and returns the o-projection `[T, hidden]`.
pub(crate) fn attention_block(
    model: &Model,
    w: &AttnWeights,
    layer: usize,
    h: &[f32],
    steps: &mut [SeqStep<'_>],
    starts: &[usize],
    bytes: &mut u64,
) -> Vec<f32> {
    let (cfg, inv_freq) = (&model.cfg, &model.inv_freq[..]);
    let t_total: usize = steps.iter().map(|s| s.tokens.len()).sum();
    let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let mut q = linear(h, t_total, &w.q, bytes);
    let mut k = linear(h, t_total, &w.k, bytes);
    let mut v = linear(h, t_total, &w.v, bytes);
    if let Some(c) = cfg.clip_qkv {
        for x in q.iter_mut().chain(k.iter_mut()).chain(v.iter_mut()) {
            *x = x.clamp(-c, c);
        }
    }
    match cfg.qk_norm {
        QkNorm::None => {}
        QkNorm::PerHead | QkNorm::Full => {
            if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
                rms_norm_inplace(&mut q, qn, cfg.rms_norm_eps);
                rms_norm_inplace(&mut k, kn, cfg.rms_norm_eps);
            }
        }
    }
    // RoPE and cache append, sequence by sequence.
    let mut off = 0;
    for (s, &start) in steps.iter_mut().zip(starts) {
        let n = s.tokens.len();
        let pos: Vec<usize> = (start..start + n).collect();
        rope_inplace(
            &mut q[off * nh * d..(off + n) * nh * d],
            nh,
            &pos,
            inv_freq,
            1.0,
        );
        rope_inplace(
            &mut k[off * nkv * d..(off + n) * nkv * d],
            nkv,
            &pos,
            inv_freq,
            1.0,
        );
        s.cache.write(
            layer,
            start,
            &k[off * nkv * d..(off + n) * nkv * d],
            &v[off * nkv * d..(off + n) * nkv * d],
        );
        off += n;
    }
    let mut attn_out = vec![0.0f32; t_total * nh * d];
    {
        let mut tasks = Vec::with_capacity(steps.len());
        let mut rest_q: &[f32] = &q;
        let mut rest_o: &mut [f32] = &mut attn_out;
        for (s, &start) in steps.iter().zip(starts) {
            let n = s.tokens.len();
            let (qs, qr) = rest_q.split_at(n * nh * d);
            let (os, or) = std::mem::take(&mut rest_o).split_at_mut(n * nh * d);
            rest_q = qr;
            rest_o = or;
            let cache: &KvCache = s.cache;
            let (kv_k, kv_v) = cache.views(layer);
            tasks.push(AttnTask {
                q: qs,
                k: kv_k,
                v: kv_v,
                shape: AttnShape {
                    n_queries: n,
                    n_heads: nh,
                    kv_len: start + n,
                    scale: 1.0 / (d as f32).sqrt(),
                },
                out: os,
            });
        }
        attention_verify_batch(&mut tasks);
    }
    linear(&attn_out, t_total, &w.o, bytes)
}
