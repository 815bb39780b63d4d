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

mod accept;
mod draft;
pub mod schedule;
pub mod vocab;

use crate::engine::{check_requests, FinishReason, GenOutput, GenRequest, GenStats};
use crate::error::{Error, Result};
use crate::model::{KvCache, LogitRows, Model, SeqStep};
use crate::sampling::Sampler;
use accept::Next;
use draft::{DraftSeq, Drafted};
use serde::Serialize;
use specmoe_cpu_kernels::parallel::on_this_thread;
use std::time::Instant;

/// Largest draft length `k` used (also the cap of `--draft-len auto`).
pub const MAX_DRAFT_LEN: usize = 16;

/// How many tokens the draft proposes per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DraftLen {
    /// Always `k`.
    Fixed(usize),
    /// Adapted every step: the `k` that maximises expected tokens per second from the
    /// observed acceptance rate and step times ([`schedule::AutoDraftLen`]), within `0..=max`
    /// (0: a plain decode step, when speculation does not pay).
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
            return Ok(DraftLen::Auto { start: 3, max: 8 });
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
    /// Mean `k` over target steps (the step's `k`; blocks drafted serially can be
    /// shorter, see [`serial_draft_len`]).
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
    /// Wall time in target verification steps (with overlap: including the draft steps
    /// that ran alongside), seconds.
    pub verify_seconds: f64,
    /// Whether the draft drafted the next block while the target verified.
    pub overlap: bool,
    /// Sequence-steps whose draft tokens were drafted during the previous verification.
    pub overlap_steps: usize,
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

/// Options of [`generate_speculative_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecOptions {
    /// Draft tokens proposed per step.
    pub draft_len: DraftLen,
    /// Draft the next block while the target verifies this one (see the module docs).
    pub overlap: bool,
    /// Cap on a block drafted *serially* — at the start and after a rejection, when no
    /// block was drafted during the last verification. `None`: the default of
    /// [`serial_draft_len`].
    pub serial_draft_len: Option<usize>,
}

/// Parses `--serial-draft-len`: `auto` (`None`, the default of [`serial_draft_len`])
/// or a number in `1..=MAX_DRAFT_LEN`.
///
/// Errors: anything else.
pub fn parse_serial_draft_len(s: &str) -> Result<Option<usize>> {
    match s.trim() {
        "auto" => Ok(None),
        t => match t.parse::<usize>() {
            Ok(n) if (1..=MAX_DRAFT_LEN).contains(&n) => Ok(Some(n)),
            _ => Err(Error::Input(format!(
                "--serial-draft-len: expected a number in 1..={MAX_DRAFT_LEN} or 'auto', got '{s}'"
            ))),
        },
    }
}

/// Default cap on a block drafted serially while overlapping ([`serial_draft_len`]).
pub const SERIAL_DRAFT_LEN: usize = 3;

/// Draft length of a block drafted serially (on the critical path) when the step's `k`
/// is `k`: `cap` when given (clamped to `1..=k`); otherwise, with overlap,
/// `min(k, SERIAL_DRAFT_LEN)`, and `k` without.
///
/// With overlap, a block drafted during the verification costs the verification step only
/// part of its draft time (the draft runs on one core beside it), while a serial block
/// costs all of it before the verification can start, so serial blocks pay to be shorter.
/// Measured on the bundled pair (2 threads, batch 1, side by side): a cap of 3 was the
/// best or tied for k = 4, 5, 6 and 8 (against caps of 2, 4 and k), and k = 6 with serial
/// blocks of 3 was 2–9 % faster than with serial blocks of 6 (five alternated runs); halving
/// k instead cost 10–17 % at k = 3 and 4.
pub fn serial_draft_len(k: usize, overlap: bool, cap: Option<usize>) -> usize {
    match cap {
        Some(c) => c.clamp(1, k.max(1)),
        None if overlap => k.min(SERIAL_DRAFT_LEN),
        None => k,
    }
}

struct Seq {
    tcache: KvCache,
    dcache: KvCache,
    sampler: Sampler,
    out: Vec<u32>,
    /// Committed tokens not yet in the target cache (always exactly the last one).
    last: u32,
    /// Committed tokens not yet in the draft cache (0 to 2).
    dpending: Vec<u32>,
    /// Draft tokens drafted during the previous verification (after its accepted offered
    /// token), if they could be used; the draft cache has read all but the last.
    ahead: Option<Drafted>,
    done: Option<FinishReason>,
}

impl Seq {
    /// Draft length for the next step given `k`, if `extra` more tokens were committed and
    /// `extra` more read into the target cache: never past the token budget or the context.
    fn next_k(&self, req: &GenRequest, k: usize, ctx: usize, extra: usize) -> usize {
        let budget = req.max_new_tokens.saturating_sub(self.out.len() + extra);
        let room = ctx.saturating_sub(self.tcache.len() + extra + 1);
        k.min(budget.saturating_sub(1)).min(room)
    }
}

/// [`generate_speculative_with`] with `overlap` on when the rayon pool has two threads or
/// more.
///
/// Errors: as [`crate::engine::generate`].
pub fn generate_speculative(
    target: &Model,
    draft: &Model,
    reqs: &[GenRequest],
    draft_len: DraftLen,
    on_token: impl FnMut(usize, u32) + Send,
) -> Result<(Vec<GenOutput>, GenStats, SpecStats)> {
    let opts = SpecOptions {
        draft_len,
        overlap: rayon::current_num_threads() >= 2,
        serial_draft_len: None,
    };
    generate_speculative_with(target, draft, reqs, opts, on_token)
}

/// Generates for `reqs` with `target`, drafting with `draft` (see the module docs);
/// `on_token(i, id)` is called for each committed token of sequence `i`, in order.
///
/// Errors: as [`crate::engine::generate`].
pub fn generate_speculative_with(
    target: &Model,
    draft: &Model,
    reqs: &[GenRequest],
    opts: SpecOptions,
    on_token: impl FnMut(usize, u32) + Send,
) -> Result<(Vec<GenOutput>, GenStats, SpecStats)> {
    crate::engine::on_generation_worker(|| spec_on_worker(target, draft, reqs, opts, on_token))
}

fn spec_on_worker(
    target: &Model,
    draft: &Model,
    reqs: &[GenRequest],
    opts: SpecOptions,
    mut on_token: impl FnMut(usize, u32),
) -> Result<(Vec<GenOutput>, GenStats, SpecStats)> {
    let ctx = target.context_len().min(draft.context_len());
    let mut stats = check_requests(reqs, ctx)?;
    let mut spec = SpecStats {
        overlap: opts.overlap,
        ..SpecStats::default()
    };
    let mut seqs: Vec<Seq> = reqs
        .iter()
        .map(|r| Seq {
            tcache: target.new_cache(),
            dcache: draft.new_cache(),
            sampler: Sampler::new(r.sampling.clone()),
            out: Vec::new(),
            last: 0,
            dpending: Vec::new(),
            ahead: None,
            done: if r.max_new_tokens == 0 {
                Some(FinishReason::Length)
            } else {
                None
            },
        })
        .collect();

    // Prefill: the target picks the first token; the draft reads the prompt (at the same
    // time when overlapping).
    let t0 = Instant::now();
    let live: Vec<usize> = (0..seqs.len())
        .filter(|&i| seqs[i].done.is_none())
        .collect();
    let out = {
        let mut tsteps: Vec<SeqStep<'_>> = Vec::new();
        let mut dsteps: Vec<SeqStep<'_>> = Vec::new();
        for (i, s) in seqs.iter_mut().enumerate() {
            if s.done.is_none() {
                tsteps.push(SeqStep {
                    tokens: &reqs[i].prompt_ids,
                    cache: &mut s.tcache,
                    logits: LogitRows::Last(1),
                });
                dsteps.push(SeqStep {
                    tokens: &reqs[i].prompt_ids,
                    cache: &mut s.dcache,
                    logits: LogitRows::Last(1),
                });
            }
        }
        let mut run_t = || target.forward(&mut tsteps, false);
        let mut run_d = || {
            if dsteps.is_empty() {
                Ok(Default::default())
            } else {
                draft.forward(&mut dsteps, false)
            }
        };
        let (t, d) = if opts.overlap {
            rayon::join(run_t, run_d)
        } else {
            let t = run_t();
            (t, run_d())
        };
        d?;
        t?
    };
    for (&i, logits) in live.iter().zip(&out.logits) {
        let s = &mut seqs[i];
        let tok = s.sampler.sample(logits);
        s.last = tok;
        s.dpending = vec![tok];
        let n = s.tcache.len();
        accept::commit(&mut s.out, &mut s.done, &reqs[i], &[tok], n, ctx, |t| {
            on_token(i, t)
        });
    }
    stats.prefill_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut auto = match opts.draft_len {
        DraftLen::Fixed(_) => None,
        DraftLen::Auto { start, max } => Some(schedule::AutoDraftLen::new(start, max)),
    };
    let mut k = match opts.draft_len {
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
        let ks: Vec<usize> = live
            .iter()
            .map(|&i| {
                // A block drafted during the last verification keeps `k`; one drafted now
                // is on the critical path.
                let kk = if seqs[i].ahead.is_some() {
                    k
                } else {
                    serial_draft_len(k, opts.overlap, opts.serial_draft_len)
                };
                seqs[i].next_k(&reqs[i], kk, ctx, 0)
            })
            .collect();
        // Draft phase: sequences whose drafts were made during the last verification take
        // them (cut to this step's k); the others draft now, batched.
        let td = Instant::now();
        let acc0 = spec.accepted;
        let mut trials = 0usize;
        let mut drafts: Vec<Drafted> = vec![Drafted::default(); live.len()];
        for (n, &i) in live.iter().enumerate() {
            let s = &mut seqs[i];
            if let Some(mut d) = s.ahead.take() {
                // The draft cache holds all but the last draft; keep `ks[n] − 1` of them.
                let fed = d.tokens.len() - 1;
                let keep = ks[n].saturating_sub(1).min(fed);
                let dl = s.dcache.len();
                s.dcache.truncate(dl - (fed - keep));
                d.tokens.truncate(ks[n].min(d.tokens.len()));
                d.qs.truncate(d.tokens.len());
                drafts[n] = d;
                spec.overlap_steps += 1;
            }
        }
        let need: Vec<usize> = live
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                if seqs[i].dpending.is_empty() {
                    0
                } else {
                    ks[n]
                }
            })
            .collect();
        let serial_step = need.iter().any(|&c| c > 0);
        if serial_step {
            let first: Vec<Vec<u32>> = live.iter().map(|&i| seqs[i].dpending.clone()).collect();
            let made = {
                let mut ds: Vec<DraftSeq<'_>> = live_iter_mut(&mut seqs, &live)
                    .map(|(_, s)| DraftSeq {
                        cache: &mut s.dcache,
                        sampler: &mut s.sampler,
                    })
                    .collect();
                // The draft's kernels are too small to gain from forking: a 1-token draft
                // step took 52–54 µs on one thread and 57–59 µs forked over two
                // (`examples/step_cost`, `DRAFT_ONLY=1`).
                on_this_thread(|| draft::draft_batch(draft, &mut ds, &first, &need))?
            };
            for (n, d) in made.into_iter().enumerate() {
                if need[n] > 0 {
                    drafts[n] = d;
                    seqs[live[n]].dpending.clear();
                }
            }
        }
        spec.draft_seconds += td.elapsed().as_secs_f64();

        // Verification: one target step over [last, d1..dk] of every live sequence; with
        // overlap, the draft meanwhile feeds d_k and drafts the next step's block for each
        // sequence, as if all of d1..dk are accepted.
        let tv = Instant::now();
        let blocks: Vec<Vec<u32>> = live
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                std::iter::once(seqs[i].last)
                    .chain(drafts[n].tokens.iter().copied())
                    .collect()
            })
            .collect();
        let starts: Vec<usize> = live.iter().map(|&i| seqs[i].tcache.len()).collect();
        let k_ahead = match opts.draft_len {
            DraftLen::Fixed(k) => k,
            DraftLen::Auto { max, .. } => (k + 1).min(max),
        };
        // Offered token + next block: next_k + 1 draws, after committing d1..dk and e.
        let ahead_counts: Vec<usize> = live
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                let kd = drafts[n].tokens.len();
                let nk = seqs[i].next_k(&reqs[i], k_ahead, ctx, kd + 1);
                if opts.overlap && kd > 0 && nk > 0 {
                    nk + 1
                } else {
                    0
                }
            })
            .collect();
        let ahead_first: Vec<Vec<u32>> = drafts
            .iter()
            .map(|d| d.tokens.last().map(|&t| vec![t]).unwrap_or_default())
            .collect();
        let dlens: Vec<usize> = live.iter().map(|&i| seqs[i].dcache.len()).collect();
        let (out, mut made) = {
            let mut tsteps: Vec<SeqStep<'_>> = Vec::new();
            let mut ds: Vec<DraftSeq<'_>> = Vec::new();
            for ((_, s), b) in live_iter_mut(&mut seqs, &live).zip(&blocks) {
                tsteps.push(SeqStep {
                    tokens: b,
                    cache: &mut s.tcache,
                    logits: LogitRows::All,
                });
                ds.push(DraftSeq {
                    cache: &mut s.dcache,
                    sampler: &mut s.sampler,
                });
            }
            let mut run_t = || target.forward(&mut tsteps, false);
            if ahead_counts.iter().any(|&c| c > 0) {
                // The draft chain stays on its worker: were one of its kernels to fork, the
                // worker could end up running target tasks while the short chain waits.
                let run_d = || {
                    on_this_thread(|| {
                        draft::draft_batch(draft, &mut ds, &ahead_first, &ahead_counts)
                    })
                };
                let (t, d) = rayon::join(run_t, run_d);
                (t?, d?)
            } else {
                (run_t()?, Vec::new())
            }
        };
        stats.decode_weight_bytes += out.weight_bytes;
        spec.verify_seconds += tv.elapsed().as_secs_f64();
        spec.target_steps += 1;
        k_sum += k;

        let vocab = target.cfg.vocab_size;
        for (n, &i) in live.iter().enumerate() {
            let s = &mut seqs[i];
            let d = &drafts[n];
            let kd = d.tokens.len();
            let ahead = if ahead_counts[n] > 0 {
                made.get_mut(n).map(std::mem::take)
            } else {
                None
            };
            let offered = ahead.as_ref().map(|a| {
                let q: &[f32] = a.qs.first().map(|q| q.as_slice()).unwrap_or(&[]);
                (a.tokens[0], q)
            });
            let (accepted, next) = accept::accept(
                &mut s.sampler,
                &d.tokens,
                &d.qs,
                offered,
                &out.logits[n],
                vocab,
            );
            spec.proposed += kd;
            spec.accepted += accepted;
            // Bernoulli trials of the geometric acceptance model: the accepted drafts and
            // the first rejected one (drafts after it are never tested).
            trials += accepted + usize::from(accepted < kd);
            spec.seq_steps += 1;
            // Roll back: keep [last, d1..d_accepted] in the target cache.
            s.tcache.truncate(starts[n] + 1 + accepted);
            let mut committed: Vec<u32> = d.tokens[..accepted].to_vec();
            match next {
                Next::Offered => {
                    // The draft cache holds [.., d1..dk, e, next block but its last draw].
                    let mut a = ahead.expect("offered implies drafted ahead");
                    let e = a.tokens.remove(0);
                    if !a.qs.is_empty() {
                        a.qs.remove(0);
                    }
                    committed.push(e);
                    s.last = e;
                    s.ahead = Some(a);
                }
                Next::Extra(extra) => {
                    // Before the drafting ahead the draft cache held
                    // [dpending.., d1..d_{kd-1}]: undo that and keep up to d_accepted.
                    let in_draft = kd.saturating_sub(1);
                    let keep_drafts = accepted.min(in_draft);
                    s.dcache.truncate(dlens[n] - in_draft + keep_drafts);
                    committed.push(extra);
                    // Tokens the draft has not read: accepted drafts it did not read, then
                    // `extra`.
                    let mut pend: Vec<u32> = std::mem::take(&mut s.dpending);
                    pend.extend_from_slice(&d.tokens[keep_drafts..accepted]);
                    pend.push(extra);
                    s.dpending = pend;
                    s.last = extra;
                }
            }
            let cl = s.tcache.len();
            stats.decode_tokens += accept::commit(
                &mut s.out,
                &mut s.done,
                &reqs[i],
                &committed,
                cl,
                ctx,
                |t| on_token(i, t),
            );
        }
        if let Some(a) = auto.as_mut() {
            // The step's real block (an overlapped block can be shorter than `k`). With
            // overlap, a step that drafted serially had its block capped and paid for its
            // drafting: its time is not that of a `kd` step in the steady state (blocks
            // drafted ahead), so only its acceptance is used.
            let kd = drafts.iter().map(|d| d.tokens.len()).max().unwrap_or(0);
            let seconds = if opts.overlap && serial_step {
                None
            } else {
                Some(td.elapsed().as_secs_f64())
            };
            a.observe(kd, spec.accepted - acc0, trials, seconds);
            k = a.k();
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
