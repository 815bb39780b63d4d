//! The attention block shared by every architecture: q/k/v projections (+bias), optional
//! q/k RMSNorm, RoPE, KV-cache append, chunked verification attention over each sequence's
//! cache, o projection. Tokens of all sequences of a step go through each projection
//! together, so each weight is read once per step.

use super::weights::{AttnWeights, Linear};
use super::{KvCache, Model, SeqStep};
use crate::config::QkNorm;
use specmoe_cpu_kernels::attention::{attention_verify_batch, AttnShape, AttnTask};
use specmoe_cpu_kernels::matmul::{matmul, matmul_many, MatmulJob};
use specmoe_cpu_kernels::norm::rms_norm_inplace;
use specmoe_cpu_kernels::rope::{rope_apply, RopeTable};

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

/// [`linear`] of several projections of the same `x`, as one parallel matmul call.
pub(crate) fn linears<const N: usize>(
    x: &[f32],
    tokens: usize,
    lins: [&Linear; N],
    bytes: &mut u64,
) -> [Vec<f32>; N] {
    let ws = lins.map(|l| l.weight.matrix());
    let mut outs = ws.map(|w| vec![0.0f32; tokens * w.rows]);
    {
        let mut jobs: Vec<MatmulJob<'_, '_>> = ws
            .iter()
            .zip(outs.iter_mut())
            .map(|(w, out)| MatmulJob { w: *w, out })
            .collect();
        matmul_many(x, tokens, &mut jobs);
    }
    for ((lin, w), out) in lins.iter().zip(&ws).zip(outs.iter_mut()) {
        *bytes += w.bytes() as u64;
        if let Some(b) = &lin.bias {
            for row in out.chunks_exact_mut(w.rows) {
                for (o, bb) in row.iter_mut().zip(b) {
                    *o += bb;
                }
            }
        }
    }
    outs
}

/// Runs attention of `layer` of `model` for the normed hidden states `h` (`[T, hidden]`, the tokens of
/// all `steps` concatenated); `starts[i]` is sequence i's cache length before this step and
/// `rope` holds the cos/sin of the `T` tokens' positions, in the same order.
/// Appends the step's keys/values to each cache and returns the o-projection `[T, hidden]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_block(
    model: &Model,
    w: &AttnWeights,
    layer: usize,
    h: &[f32],
    steps: &mut [SeqStep<'_>],
    starts: &[usize],
    rope: &RopeTable,
    bytes: &mut u64,
) -> Vec<f32> {
    let cfg = &model.cfg;
    let t_total: usize = steps.iter().map(|s| s.tokens.len()).sum();
    let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let [mut q, mut k, mut v] = linears(h, t_total, [&w.q, &w.k, &w.v], bytes);
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
    // RoPE (the step's cos/sin table, row `off + i` for token i of a sequence) and cache
    // append, sequence by sequence.
    rope_apply(&mut q, nh, rope, 0);
    rope_apply(&mut k, nkv, rope, 0);
    let mut off = 0;
    for (s, &start) in steps.iter_mut().zip(starts) {
        let n = s.tokens.len();
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
