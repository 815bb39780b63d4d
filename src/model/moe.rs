//! The feed-forward block: a dense gated MLP, or a mixture of experts that routes all
//! tokens of the step together (softmax over router logits → top-k → optional
//! renormalisation, as transformers' Mixtral / Qwen-MoE / OLMoE blocks), groups them per
//! expert and runs each chosen expert once on all of its tokens (the chosen experts in
//! parallel, mixed in expert order); Qwen2-MoE adds a shared
//! expert scaled by `sigmoid(x · shared_expert_gate)`.

use super::weights::{FfnWeights, MlpWeights, MoeWeights};
use rayon::prelude::*;
use specmoe_cpu_kernels::activation::{sigmoid, silu_mul_inplace};
use specmoe_cpu_kernels::matmul::{matmul, matmul_many, MatmulJob};
use specmoe_cpu_kernels::parallel;
use specmoe_cpu_kernels::select::{softmax_inplace, top_k};

/// Routing of one MoE layer for the tokens of a step: per token, the chosen experts with
/// their mixing weights, largest first.
pub type Routing = Vec<Vec<(usize, f32)>>;

fn mm(x: &[f32], tokens: usize, w: &crate::tensor::Tensor, bytes: &mut u64) -> Vec<f32> {
    let m = w.matrix();
    let mut out = vec![0.0f32; tokens * m.rows];
    matmul(x, tokens, &m, &mut out);
    *bytes += m.bytes() as u64;
    out
}

/// `down(silu(gate(x)) · up(x))` for `x` `[tokens, hidden]` → `[tokens, hidden]`.
pub(crate) fn mlp(x: &[f32], tokens: usize, w: &MlpWeights, bytes: &mut u64) -> Vec<f32> {
    let (gm, um) = (w.gate.matrix(), w.up.matrix());
    let mut g = vec![0.0f32; tokens * gm.rows];
    let mut u = vec![0.0f32; tokens * um.rows];
    matmul_many(
        x,
        tokens,
        &mut [
            MatmulJob { w: gm, out: &mut g },
            MatmulJob { w: um, out: &mut u },
        ],
    );
    *bytes += (gm.bytes() + um.bytes()) as u64;
    silu_mul_inplace(&mut g, &u);
    mm(&g, tokens, &w.down, bytes)
}

/// Per-token top-k routing from router logits `[tokens, experts]`.
pub(crate) fn route(logits: &[f32], n_experts: usize, top: usize, renorm: bool) -> Routing {
    logits
        .chunks_exact(n_experts)
        .map(|row| {
            let mut p = row.to_vec();
            softmax_inplace(&mut p);
            let mut sel = top_k(&p, top);
            if renorm {
                let s: f32 = sel.iter().map(|x| x.1).sum();
                for x in sel.iter_mut() {
                    x.1 /= s;
                }
            }
            sel
        })
        .collect()
}

/// Runs the feed-forward block on `h` `[tokens, hidden]`; returns its output and, for a
/// MoE block, the routing.
pub(crate) fn ffn_block(
    w: &FfnWeights,
    h: &[f32],
    tokens: usize,
    hidden: usize,
    bytes: &mut u64,
) -> (Vec<f32>, Option<Routing>) {
    match w {
        FfnWeights::Dense(m) => (mlp(h, tokens, m, bytes), None),
        FfnWeights::Moe(m) => {
            let (out, r) = moe_block(m, h, tokens, hidden, bytes);
            (out, Some(r))
        }
    }
}

fn moe_block(
    w: &MoeWeights,
    h: &[f32],
    tokens: usize,
    hidden: usize,
    bytes: &mut u64,
) -> (Vec<f32>, Routing) {
    let n_exp = w.experts.len();
    let logits = mm(h, tokens, &w.router, bytes);
    let routing = route(&logits, n_exp, w.top_k, w.norm_topk_prob);
    let mut groups: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_exp];
    for (t, sel) in routing.iter().enumerate() {
        for &(e, wt) in sel {
            groups[e].push((t, wt));
        }
    }
    // The chosen experts run in parallel (each on all of its tokens); their outputs are then
    // mixed in expert order, so the sum is the same whatever the thread count.
    let chosen: Vec<(usize, &Vec<(usize, f32)>)> = groups
        .iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .collect();
    let run = |&(e, grp): &(usize, &Vec<(usize, f32)>)| {
        let mut xe = Vec::with_capacity(grp.len() * hidden);
        for &(t, _) in grp {
            xe.extend_from_slice(&h[t * hidden..(t + 1) * hidden]);
        }
        let mut b = 0u64;
        let ye = mlp(&xe, grp.len(), &w.experts[e], &mut b);
        (ye, b)
    };
    let ys: Vec<(Vec<f32>, u64)> = if chosen.len() > 1 && parallel::may_fork() {
        chosen.par_iter().map(run).collect()
    } else {
        chosen.iter().map(run).collect()
    };
    let mut out = vec![0.0f32; tokens * hidden];
    for (&(_, grp), (ye, b)) in chosen.iter().zip(&ys) {
        *bytes += b;
        for (j, &(t, wt)) in grp.iter().enumerate() {
            for (o, y) in out[t * hidden..(t + 1) * hidden]
                .iter_mut()
                .zip(&ye[j * hidden..(j + 1) * hidden])
            {
                *o += wt * y;
            }
        }
    }
    if let Some((sw, gate)) = &w.shared {
        let ys = mlp(h, tokens, sw, bytes);
        let g = mm(h, tokens, gate, bytes);
        for t in 0..tokens {
            let s = sigmoid(g[t]);
            for (o, y) in out[t * hidden..(t + 1) * hidden]
                .iter_mut()
                .zip(&ys[t * hidden..(t + 1) * hidden])
            {
                *o += s * y;
            }
        }
    }
    (out, routing)
}
