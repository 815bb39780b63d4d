//! Batched drafting: every listed sequence feeds its first block to the draft model, then
//! its own draws, one batched draft step per token position.

use crate::error::Result;
use crate::model::{KvCache, LogitRows, Model, SeqStep};
use crate::sampling::Sampler;
use specmoe_cpu_kernels::select::argmax;

/// What drafting needs of one sequence: its draft KV cache and its sampler (split borrows of
/// the sequence, so that the target can use its own cache at the same time).
pub(super) struct DraftSeq<'a> {
    pub cache: &'a mut KvCache,
    pub sampler: &'a mut Sampler,
}

/// Draft tokens and, for sampled requests, the draft distribution `q` `[vocab]` each was
/// drawn from (empty for greedy requests).
#[derive(Clone, Debug, Default)]
pub(super) struct Drafted {
    pub tokens: Vec<u32>,
    pub qs: Vec<Vec<f32>>,
}

/// Drafts `counts[n]` tokens for sequence `n`: step 0 feeds `first[n]` (the tokens its draft
/// cache has not read yet, ≥ 1), step `j` feeds draw `j − 1`; a draw is the argmax for greedy
/// requests and a sample of `q` (after the request's logits processing) otherwise.
///
/// After it returns, sequence `n`'s draft cache has read `first[n]` and its first
/// `counts[n] − 1` draws (the last draw is never fed). Sequences with `counts[n] == 0` are
/// left untouched.
///
/// Errors: those of [`Model::forward`] (context exceeded).
pub(super) fn draft_batch(
    draft: &Model,
    seqs: &mut [DraftSeq<'_>],
    first: &[Vec<u32>],
    counts: &[usize],
) -> Result<Vec<Drafted>> {
    let mut out: Vec<Drafted> = vec![Drafted::default(); seqs.len()];
    let kmax = counts.iter().copied().max().unwrap_or(0);
    for j in 0..kmax {
        let who: Vec<usize> = (0..seqs.len()).filter(|&n| counts[n] > j).collect();
        let blocks: Vec<Vec<u32>> = who
            .iter()
            .map(|&n| {
                if j == 0 {
                    first[n].clone()
                } else {
                    vec![*out[n].tokens.last().expect("drafted")]
                }
            })
            .collect();
        let logits = {
            let mut steps: Vec<SeqStep<'_>> = Vec::with_capacity(who.len());
            let mut it = who.iter().zip(&blocks).peekable();
            for (n, s) in seqs.iter_mut().enumerate() {
                if let Some(&(&w, b)) = it.peek() {
                    if w == n {
                        steps.push(SeqStep {
                            tokens: b,
                            cache: s.cache,
                            logits: LogitRows::Last(1),
                        });
                        it.next();
                    }
                }
            }
            draft.forward(&mut steps, false)?.logits
        };
        for (&n, l) in who.iter().zip(&logits) {
            let s = &mut seqs[n];
            if s.sampler.params.is_greedy() {
                out[n].tokens.push(argmax(l) as u32);
            } else {
                let q = s.sampler.params.probs(l);
                out[n].tokens.push(s.sampler.draw(&q));
                out[n].qs.push(q);
            }
        }
    }
    Ok(out)
}
