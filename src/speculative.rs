//! Speculative decoding for a batch: a small draft model proposes `k` tokens per sequence,
//! the target verifies all `k+1` positions of every sequence in one forward step (ragged
//! blocks through the chunked verification attention), and each sequence accepts its own
//! number of tokens; both KV caches are rolled back per sequence.
//!
//! Lossless: greedy requests accept a draft token iff it is the target's argmax, so the
//! output equals greedy decoding of the target alone; sampled requests use speculative
//! sampling (Leviathan et al. 2023, arXiv 2211.17192, Algorithm 1; Chen et al. 2023,
//! arXiv 2302.01318): accept `d ~ q` with probability `min(1, p(d)/q(d))`, on rejection draw
//! from `norm(max(0, p − q))`, and draw the bonus token from `p`, with the same
//! temperature / top-k / top-p processing applied to `p` (target) and `q` (draft).

use crate::engine::{check_requests, FinishReason, GenOutput, GenRequest, GenStats};
use crate::error::{Error, Result};
use crate::model::{KvCache, LogitRows, Model, SeqStep};
use crate::sampling::Sampler;
use serde::Serialize;
use specmoe_cpu_kernels::select::argmax;
use std::time::Instant;

/// Largest draft length `k` used (also the cap of `--draft-len auto`).
pub const MAX_DRAFT_LEN: usize = 16;

/// How many tokens the draft proposes per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DraftLen {
    /// Always `k`.
    Fixed(usize),
    /// Adapted every step from the observed acceptance (transformers' "heuristic"
    /// schedule): `k + 2` after a step where every sequence accepted all its draft tokens,
    /// `k − 1` otherwise, within `1..=max`.
    Auto {
        /// Initial `k`.
        start: usize,
        /// Largest `k`.
        max: usize,
    },
}

impl DraftLen {
    /// Parses `--draft-len`: a number or `auto`.
    ///
    /// Errors: anything else, or a number outside `1..=MAX_DRAFT_LEN`.
    pub fn parse(s: &str) -> Result<Self> {
        if s.trim() == "auto" {
            return Ok(DraftLen::Auto { start: 4, max: 8 });
        }
        match s.trim().parse::<usize>() {
            Ok(k) if (1..=MAX_DRAFT_LEN).contains(&k) => Ok(DraftLen::Fixed(k)),
            _ => Err(Error::Input(format!(
                "--draft-len: expected a number in 1..={MAX_DRAFT_LEN} or 'auto', got '{s}'"
            ))),
        }
    }
}

/// Counters of a speculative run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SpecStats {
    /// `k` of the last step (fixed `k`, or where `auto` ended).
    pub draft_len: usize,
    /// Mean `k` over target steps.
    pub mean_draft_len: f64,
    /// Draft tokens proposed, over all sequences.
    pub proposed: usize,
    /// Draft tokens accepted, over all sequences.
    pub accepted: usize,
    /// Target verification steps (each covers every live sequence).
    pub target_steps: usize,
    /// Sequence-steps: one per live sequence per target step.
    pub seq_steps: usize,
    /// Wall time in draft forward steps, seconds.
    pub draft_seconds: f64,
    /// Wall time in target verification steps, seconds.
    pub verify_seconds: f64,
}

impl SpecStats {
    /// Accepted ÷ proposed draft tokens.
    pub fn acceptance_rate(&self) -> f64 {
        if self.proposed == 0 {
            0.0
        } else {
            self.accepted as f64 / self.proposed as f64
        }
    }
}

/// Checks that `draft` can serve `target`: identical tokenizer vocabularies (when both
/// have one) and the same logits width.
///
/// Errors: names both directories and what differs.
pub fn check_pair(
    target: &Model,
    draft: &Model,
    target_vocab: Option<&std::collections::HashMap<String, u32>>,
    draft_vocab: Option<&std::collections::HashMap<String, u32>>,
) -> Result<()> {
    if target.cfg.vocab_size != draft.cfg.vocab_size {
        return Err(Error::Input(format!(
            "--draft: the draft's vocab_size {} differs from the target's {}; the pair must share one tokenizer",
            draft.cfg.vocab_size, target.cfg.vocab_size
        )));
    }
    if let (Some(t), Some(d)) = (target_vocab, draft_vocab) {
        if t != d {
            let diff = t.iter().filter(|(k, v)| d.get(*k) != Some(v)).count()
                + d.keys().filter(|k| !t.contains_key(*k)).count();
            return Err(Error::Input(format!(
                "--draft: the draft's tokenizer differs from the target's ({diff} of {} tokens map differently); the pair must share one tokenizer",
                t.len().max(d.len())
            )));
        }
    }
    Ok(())
}

struct Seq {
    tcache: KvCache,
    dcache: KvCache,
    sampler: Sampler,
    out: Vec<u32>,
    /// Committed tokens not yet in the target cache (always exactly the last one).
    last: u32,
    /// Committed tokens not yet in the draft cache (1 or 2).
    dpending: Vec<u32>,
    done: Option<FinishReason>,
}

/// Generates for `reqs` with `target`, drafting with `draft` (see the module docs);
/// `on_token(i, id)` is called for each committed token of sequence `i`, in order.
///
/// Errors: as [`crate::engine::generate`].
pub fn generate_speculative(
    target: &Model,
    draft: &Model,
    reqs: &[GenRequest],
    draft_len: DraftLen,
    mut on_token: impl FnMut(usize, u32),
) -> Result<(Vec<GenOutput>, GenStats, SpecStats)> {
    let ctx = target.context_len().min(draft.context_len());
    let mut stats = check_requests(reqs, ctx)?;
    let mut spec = SpecStats::default();
    let mut seqs: Vec<Seq> = reqs
        .iter()
        .map(|r| Seq {
            tcache: target.new_cache(),
            dcache: draft.new_cache(),
            sampler: Sampler::new(r.sampling.clone()),
            out: Vec::new(),
            last: 0,
            dpending: Vec::new(),
            done: if r.max_new_tokens == 0 {
                Some(FinishReason::Length)
            } else {
                None
            },
        })
        .collect();

    // Prefill: the target picks the first token; the draft reads the prompt too.
    let t0 = Instant::now();
    let live: Vec<usize> = (0..seqs.len())
        .filter(|&i| seqs[i].done.is_none())
        .collect();
    let out = {
        let mut steps: Vec<SeqStep<'_>> = Vec::new();
        for (i, s) in seqs.iter_mut().enumerate() {
            if s.done.is_none() {
                steps.push(SeqStep {
                    tokens: &reqs[i].prompt_ids,
                    cache: &mut s.tcache,
                    logits: LogitRows::Last(1),
                });
            }
        }
        target.forward(&mut steps, false)?
    };
    {
        let mut steps: Vec<SeqStep<'_>> = Vec::new();
        for (i, s) in seqs.iter_mut().enumerate() {
            if s.done.is_none() {
                steps.push(SeqStep {
                    tokens: &reqs[i].prompt_ids,
                    cache: &mut s.dcache,
                    logits: LogitRows::Last(1),
                });
            }
        }
        if !steps.is_empty() {
            draft.forward(&mut steps, false)?;
        }
    }
    for (&i, logits) in live.iter().zip(&out.logits) {
        let s = &mut seqs[i];
        let tok = s.sampler.sample(logits);
        s.last = tok;
        s.dpending = vec![tok];
        commit(s, &reqs[i], &[tok], ctx, |t| on_token(i, t));
    }
    stats.prefill_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut k = match draft_len {
        DraftLen::Fixed(k) => k,
        DraftLen::Auto { start, .. } => start,
    };
    let mut k_sum = 0usize;
    loop {
        let live: Vec<usize> = (0..seqs.len())
            .filter(|&i| seqs[i].done.is_none())
            .collect();
        if live.is_empty() {
            break;
        }
        // Per-sequence k: never past the token budget or the context.
        let ks: Vec<usize> = live
            .iter()
            .map(|&i| {
                let s = &seqs[i];
                let budget = reqs[i].max_new_tokens - s.out.len();
                let room = ctx - s.tcache.len() - 1;
                k.min(budget.saturating_sub(1)).min(room)
            })
            .collect();
        // Draft phase: up to max(ks) batched draft steps.
        let td = Instant::now();
        let mut drafts: Vec<Vec<u32>> = vec![Vec::new(); live.len()];
        let mut qs: Vec<Vec<Vec<f32>>> = vec![Vec::new(); live.len()];
        let kmax = ks.iter().copied().max().unwrap_or(0);
        for j in 0..kmax {
            let who: Vec<usize> = (0..live.len()).filter(|&n| ks[n] > j).collect();
            let blocks: Vec<Vec<u32>> = who
                .iter()
                .map(|&n| {
                    if j == 0 {
                        seqs[live[n]].dpending.clone()
                    } else {
                        vec![*drafts[n].last().expect("drafted")]
                    }
                })
                .collect();
            let out = {
                let mut steps: Vec<SeqStep<'_>> = Vec::new();
                let mut it = who.iter().zip(&blocks).peekable();
                for (n, s) in live_iter_mut(&mut seqs, &live) {
                    if let Some((&w, b)) = it.peek() {
                        if w == n {
                            steps.push(SeqStep {
                                tokens: b,
                                cache: &mut s.dcache,
                                logits: LogitRows::Last(1),
                            });
                            it.next();
                        }
                    }
                }
                draft.forward(&mut steps, false)?
            };
            for (&n, logits) in who.iter().zip(&out.logits) {
                let s = &mut seqs[live[n]];
                let (d, q) = if s.sampler.params.is_greedy() {
                    (argmax(logits) as u32, Vec::new())
                } else {
                    let q = s.sampler.params.probs(logits);
                    (s.sampler.draw(&q), q)
                };
                drafts[n].push(d);
                qs[n].push(q);
                if j == 0 {
                    s.dpending.clear();
                }
            }
        }
        spec.draft_seconds += td.elapsed().as_secs_f64();

        // Verification: one target step over [last, d1..dk] of every live sequence.
        let tv = Instant::now();
        let blocks: Vec<Vec<u32>> = live
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                std::iter::once(seqs[i].last)
                    .chain(drafts[n].iter().copied())
                    .collect()
            })
            .collect();
        let starts: Vec<usize> = live.iter().map(|&i| seqs[i].tcache.len()).collect();
        let out = {
            let mut steps: Vec<SeqStep<'_>> = Vec::new();
            for ((_, s), b) in live_iter_mut(&mut seqs, &live).zip(&blocks) {
                steps.push(SeqStep {
                    tokens: b,
                    cache: &mut s.tcache,
                    logits: LogitRows::All,
                });
            }
            target.forward(&mut steps, false)?
        };
        stats.decode_weight_bytes += out.weight_bytes;
        spec.verify_seconds += tv.elapsed().as_secs_f64();
        spec.target_steps += 1;
        k_sum += k;

        let vocab = target.cfg.vocab_size;
        let mut all_accepted = true;
        for (n, &i) in live.iter().enumerate() {
            let s = &mut seqs[i];
            let logits = &out.logits[n];
            let kd = drafts[n].len();
            let (accepted, extra) = verify(s, &drafts[n], &qs[n], logits, vocab);
            all_accepted &= accepted == kd;
            spec.proposed += kd;
            spec.accepted += accepted;
            spec.seq_steps += 1;
            // Roll back: keep [last, d1..d_accepted] in the target cache.
            s.tcache.truncate(starts[n] + 1 + accepted);
            // The draft cache holds [dpending.., d1..d_{kd-1}]; keep up to d_accepted.
            let dlen = s.dcache.len();
            let in_draft = kd.saturating_sub(1); // d1..d_{kd-1} were fed to the draft
            let keep_drafts = accepted.min(in_draft);
            if kd > 0 {
                s.dcache.truncate(dlen - in_draft + keep_drafts);
            }
            let mut committed: Vec<u32> = drafts[n][..accepted].to_vec();
            committed.push(extra);
            // Tokens the draft has not yet seen: accepted drafts it did not read, then `extra`.
            let mut pend: Vec<u32> = std::mem::take(&mut s.dpending);
            pend.extend_from_slice(&drafts[n][keep_drafts..accepted]);
            pend.push(extra);
            s.dpending = pend;
            s.last = extra;
            stats.decode_tokens += commit(s, &reqs[i], &committed, ctx, |t| on_token(i, t));
        }
        if let DraftLen::Auto { max, .. } = draft_len {
            k = if all_accepted {
                (k + 2).min(max)
            } else {
                k.saturating_sub(1).max(1)
            };
        }
    }
    stats.decode_seconds = t1.elapsed().as_secs_f64();
    stats.decode_steps = spec.target_steps;
    stats.generated_tokens = seqs.iter().map(|s| s.out.len()).sum();
    spec.draft_len = k;
    spec.mean_draft_len = if spec.target_steps > 0 {
        k_sum as f64 / spec.target_steps as f64
    } else {
        k as f64
    };
    let outputs = seqs
        .into_iter()
        .map(|s| GenOutput {
            output_ids: s.out,
            finish: s.done.unwrap_or(FinishReason::Length),
        })
        .collect();
    Ok((outputs, stats, spec))
}

/// Iterates `(position in live, &mut Seq)` over the live sequences in order.
fn live_iter_mut<'a>(
    seqs: &'a mut [Seq],
    live: &'a [usize],
) -> impl Iterator<Item = (usize, &'a mut Seq)> + 'a {
    let mut it = live.iter().enumerate().peekable();
    seqs.iter_mut()
        .enumerate()
        .filter_map(move |(i, s)| match it.peek() {
            Some(&(n, &li)) if li == i => {
                it.next();
                Some((n, s))
            }
            _ => None,
        })
}

/// Accepts a prefix of `drafts` against the target's logits `[k+1, vocab]` and picks the
/// correction (on rejection) or bonus (all accepted) token. Returns (accepted, extra token).
fn verify(
    s: &mut Seq,
    drafts: &[u32],
    qs: &[Vec<f32>],
    logits: &[f32],
    vocab: usize,
) -> (usize, u32) {
    let row = |j: usize| &logits[j * vocab..(j + 1) * vocab];
    if s.sampler.params.is_greedy() {
        for (j, &d) in drafts.iter().enumerate() {
            let t = argmax(row(j)) as u32;
            if t != d {
                return (j, t);
            }
        }
        return (drafts.len(), argmax(row(drafts.len())) as u32);
    }
    for (j, &d) in drafts.iter().enumerate() {
        let p = s.sampler.params.probs(row(j));
        let q = &qs[j];
        let (pd, qd) = (p[d as usize], q[d as usize]);
        if qd > 0.0 && s.sampler.uniform() < (pd / qd).min(1.0) {
            continue;
        }
        let mut r: Vec<f32> = p.iter().zip(q).map(|(a, b)| (a - b).max(0.0)).collect();
        let sum: f32 = r.iter().sum();
        let tok = if sum > 0.0 {
            r.iter_mut().for_each(|x| *x /= sum);
            s.sampler.draw(&r)
        } else {
            s.sampler.draw(&p)
        };
        return (j, tok);
    }
    let p = s.sampler.params.probs(row(drafts.len()));
    (drafts.len(), s.sampler.draw(&p))
}

/// Appends `toks` to the output up to a stop id, the budget or the context; returns how many
/// were kept.
fn commit(
    s: &mut Seq,
    req: &GenRequest,
    toks: &[u32],
    ctx: usize,
    mut emit: impl FnMut(u32),
) -> usize {
    let mut n = 0;
    for &t in toks {
        if s.done.is_some() {
            break;
        }
        s.out.push(t);
        emit(t);
        n += 1;
        if req.stop_ids.contains(&t) {
            s.done = Some(FinishReason::Eos);
        } else if s.out.len() >= req.max_new_tokens {
            s.done = Some(FinishReason::Length);
        } else if s.tcache.len() + 1 > ctx {
            s.done = Some(FinishReason::Context);
        }
    }
    n
}
