//! Acceptance of draft tokens against the target's verification logits (Leviathan et al.
//! 2023, arXiv 2211.17192, Algorithm 1), and committing tokens to a sequence's output.

use crate::engine::{finish_after, FinishReason, GenRequest};
use crate::sampling::Sampler;
use specmoe_cpu_kernels::select::argmax;

/// What follows the accepted prefix of the draft tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// A token drawn from the target: the correction after a rejection, or the bonus token
    /// after a fully accepted block.
    Extra(u32),
    /// Every draft token was accepted and so was the offered next draft token (drafted while
    /// the target verified), which takes the bonus token's place.
    Offered,
}

/// Accepts a prefix of `drafts` (`qs[j]`: the draft distribution `drafts[j]` was drawn from;
/// empty for greedy requests) against the target's logits `[k+1, vocab]` row-major (row `j`
/// predicts the token after `drafts[..j]`). When all `k` are accepted and `offered =
/// Some((e, q_e))`, `e` — a draft token for position `k + 1` drawn from `q_e` given the
/// accepted block — is tested against row `k` like any other draft token; otherwise row `k`
/// gives the bonus token. Returns the number of accepted draft tokens and what follows.
///
/// Greedy requests accept a token iff it is the row's argmax, so the committed tokens are
/// the target's greedy tokens. Sampled requests accept `d ~ q` with probability
/// `min(1, p(d)/q(d))` and on rejection draw from `norm(max(0, p − q))`; `p` and `q` went
/// through the same logits processing ([`crate::sampling::SamplingParams::probs`]).
pub(super) fn accept(
    sampler: &mut Sampler,
    drafts: &[u32],
    qs: &[Vec<f32>],
    offered: Option<(u32, &[f32])>,
    logits: &[f32],
    vocab: usize,
) -> (usize, Next) {
    let row = |j: usize| &logits[j * vocab..(j + 1) * vocab];
    let k = drafts.len();
    if sampler.params.is_greedy() {
        for (j, &d) in drafts.iter().enumerate() {
            let t = argmax(row(j)) as u32;
            if t != d {
                return (j, Next::Extra(t));
            }
        }
        let t = argmax(row(k)) as u32;
        return match offered {
            Some((e, _)) if e == t => (k, Next::Offered),
            _ => (k, Next::Extra(t)),
        };
    }
    for (j, &d) in drafts.iter().enumerate() {
        let p = sampler.params.probs(row(j));
        if let Some(t) = test(sampler, &p, d, &qs[j]) {
            return (j, Next::Extra(t));
        }
    }
    let p = sampler.params.probs(row(k));
    match offered {
        Some((e, q)) => match test(sampler, &p, e, q) {
            None => (k, Next::Offered),
            Some(t) => (k, Next::Extra(t)),
        },
        None => (k, Next::Extra(sampler.draw(&p))),
    }
}

/// One speculative-sampling test of draft token `d ~ q` against the target's `p`: `None` if
/// accepted, else the replacement drawn from `norm(max(0, p − q))` (from `p` if that is 0).
fn test(sampler: &mut Sampler, p: &[f32], d: u32, q: &[f32]) -> Option<u32> {
    let (pd, qd) = (p[d as usize], q[d as usize]);
    if qd > 0.0 && sampler.uniform() < (pd / qd).min(1.0) {
        return None;
    }
    let mut r: Vec<f32> = p.iter().zip(q).map(|(a, b)| (a - b).max(0.0)).collect();
    let sum: f32 = r.iter().sum();
    Some(if sum > 0.0 {
        r.iter_mut().for_each(|x| *x /= sum);
        sampler.draw(&r)
    } else {
        sampler.draw(p)
    })
}

/// Appends `toks` to `out` up to a stop id, the budget or the context (`cache_len`: the
/// target KV cache length, which does not hold the last committed token yet); sets `done`
/// and returns how many were kept.
pub(super) fn commit(
    out: &mut Vec<u32>,
    done: &mut Option<FinishReason>,
    req: &GenRequest,
    toks: &[u32],
    cache_len: usize,
    ctx: usize,
    mut emit: impl FnMut(u32),
) -> usize {
    let mut n = 0;
    for &t in toks {
        if done.is_some() {
            break;
        }
        out.push(t);
        emit(t);
        n += 1;
        *done = finish_after(req, t, out.len(), cache_len, ctx);
    }
    n
}
