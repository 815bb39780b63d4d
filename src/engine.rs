//! Generation for a batch of prompts: one prefill step over all prompts (ragged blocks),
//! then decode steps over the sequences still running, each stopping on its own at an EOS
//! id, its token budget or the end of the context.

use crate::error::{Error, Result};
use crate::model::{KvCache, LogitRows, Model, SeqStep};
use crate::sampling::{Sampler, SamplingParams};
use serde::Serialize;
use specmoe_cpu_kernels::parallel::keep_warm;
use std::time::Instant;

/// One prompt to continue.
#[derive(Clone, Debug)]
pub struct GenRequest {
    /// Prompt token ids (at least one).
    pub prompt_ids: Vec<u32>,
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Generation stops after producing any of these (empty with `--ignore-eos`).
    pub stop_ids: Vec<u32>,
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Produced a stop id (included in the output).
    Eos,
    /// Reached `max_new_tokens`.
    Length,
    /// Reached the model's context.
    Context,
}

/// One generated continuation.
#[derive(Clone, Debug)]
pub struct GenOutput {
    /// New token ids.
    pub output_ids: Vec<u32>,
    /// Why generation stopped.
    pub finish: FinishReason,
}

/// Timings and counts of a batch (seconds, tokens, bytes).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GenStats {
    /// Prompt tokens over all sequences.
    pub prompt_tokens: usize,
    /// Generated tokens over all sequences.
    pub generated_tokens: usize,
    /// Wall time of the prefill step, seconds (includes sampling the first token).
    pub prefill_seconds: f64,
    /// Wall time of all decode steps, seconds.
    pub decode_seconds: f64,
    /// Decode steps run.
    pub decode_steps: usize,
    /// Tokens produced by decode steps (generated tokens minus the first per sequence).
    pub decode_tokens: usize,
    /// Weight bytes read by the decode steps.
    pub decode_weight_bytes: u64,
}

impl GenStats {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prompt_tokens as f64, self.prefill_seconds)
    }

    /// Decode tokens per second (all sequences together).
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.decode_tokens as f64, self.decode_seconds)
    }

    /// Effective weight bandwidth of decode in GB/s: weight bytes read by the decode steps ÷
    /// their wall time ÷ 1e9.
    pub fn decode_weight_gbps(&self) -> f64 {
        rate(self.decode_weight_bytes as f64 / 1e9, self.decode_seconds)
    }
}

fn rate(x: f64, s: f64) -> f64 {
    if s > 0.0 {
        x / s
    } else {
        0.0
    }
}

/// Checks every prompt against the context `ctx` and returns stats with the prompt tokens
/// counted.
///
/// Errors: an empty prompt, or one longer than `ctx`.
pub(crate) fn check_requests(reqs: &[GenRequest], ctx: usize) -> Result<GenStats> {
    for (i, r) in reqs.iter().enumerate() {
        if r.prompt_ids.is_empty() {
            return Err(Error::Input(format!(
                "prompt {i} is empty: at least one token is needed"
            )));
        }
        if r.prompt_ids.len() > ctx {
            return Err(Error::Input(format!(
                "prompt {i} has {} tokens, more than the model's context of {ctx}",
                r.prompt_ids.len()
            )));
        }
    }
    Ok(GenStats {
        prompt_tokens: reqs.iter().map(|r| r.prompt_ids.len()).sum(),
        ..Default::default()
    })
}

struct Running {
    cache: KvCache,
    sampler: Sampler,
    out: Vec<u32>,
    done: Option<FinishReason>,
}

/// Generates continuations for `reqs` as one batch; `on_token(i, id)` is called for every
/// token of sequence `i` as soon as it is chosen.
///
/// Errors: an empty prompt, a prompt longer than the context, ids outside the vocabulary.
pub fn generate(
    model: &Model,
    reqs: &[GenRequest],
    on_token: impl FnMut(usize, u32) + Send,
) -> Result<(Vec<GenOutput>, GenStats)> {
    on_generation_worker(|| generate_on_worker(model, reqs, on_token))
}

/// [`on_worker`] for a generation loop: with the pool's other workers kept polling for work
/// while it runs (`parallel::keep_warm`), so that none of its parallel calls pays a wake-up.
pub(crate) fn on_generation_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    on_worker(|| keep_warm(f))
}

/// Runs `f` on a worker thread of the current rayon pool (the global pool when called from
/// outside any), directly if the caller already is one. The forward step makes dozens of
/// parallel calls; made from outside the pool each is injected into it and waited for on a
/// futex (tens of µs), made on a worker it is pushed onto the worker's own deque.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

fn generate_on_worker(
    model: &Model,
    reqs: &[GenRequest],
    mut on_token: impl FnMut(usize, u32),
) -> Result<(Vec<GenOutput>, GenStats)> {
    let ctx = model.context_len();
    let mut stats = check_requests(reqs, ctx)?;
    let mut run: Vec<Running> = reqs
        .iter()
        .map(|r| Running {
            cache: model.new_cache(),
            sampler: Sampler::new(r.sampling.clone()),
            out: Vec::new(),
            done: None,
        })
        .collect();
    let t0 = Instant::now();
    let active: Vec<usize> = (0..reqs.len())
        .filter(|&i| reqs[i].max_new_tokens > 0)
        .collect();
    let mut next: Vec<u32> = vec![0; reqs.len()];
    let out = {
        let mut steps: Vec<SeqStep<'_>> = Vec::new();
        for (i, r) in run.iter_mut().enumerate() {
            if reqs[i].max_new_tokens > 0 {
                steps.push(SeqStep {
                    tokens: &reqs[i].prompt_ids,
                    cache: &mut r.cache,
                    logits: LogitRows::Last(1),
                });
            }
        }
        model.forward(&mut steps, false)?
    };
    for (&i, logits) in active.iter().zip(&out.logits) {
        next[i] = accept(&mut run[i], &reqs[i], logits, ctx, |t| on_token(i, t));
    }
    for (i, r) in run.iter_mut().enumerate() {
        if reqs[i].max_new_tokens == 0 {
            r.done = Some(FinishReason::Length);
        }
    }
    stats.prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    loop {
        let live: Vec<usize> = (0..run.len()).filter(|&i| run[i].done.is_none()).collect();
        if live.is_empty() {
            break;
        }
        let toks: Vec<[u32; 1]> = live.iter().map(|&i| [next[i]]).collect();
        let out = {
            let mut steps: Vec<SeqStep<'_>> = Vec::new();
            let mut it = live.iter().peekable();
            for (i, r) in run.iter_mut().enumerate() {
                if it.peek() == Some(&&i) {
                    let j = steps.len();
                    it.next();
                    steps.push(SeqStep {
                        tokens: &toks[j],
                        cache: &mut r.cache,
                        logits: LogitRows::Last(1),
                    });
                }
            }
            model.forward(&mut steps, false)?
        };
        stats.decode_steps += 1;
        stats.decode_weight_bytes += out.weight_bytes;
        for (&i, logits) in live.iter().zip(&out.logits) {
            next[i] = accept(&mut run[i], &reqs[i], logits, ctx, |t| on_token(i, t));
            stats.decode_tokens += 1;
        }
    }
    stats.decode_seconds = t1.elapsed().as_secs_f64();
    stats.generated_tokens = run.iter().map(|r| r.out.len()).sum();
    let outputs = run
        .into_iter()
        .map(|r| GenOutput {
            output_ids: r.out,
            finish: r.done.unwrap_or(FinishReason::Length),
        })
        .collect();
    Ok((outputs, stats))
}

/// Samples the next token of a sequence from `logits`, records it and decides whether the
/// sequence is done; returns the token (the input of the next step).
fn accept(
    r: &mut Running,
    req: &GenRequest,
    logits: &[f32],
    ctx: usize,
    mut emit: impl FnMut(u32),
) -> u32 {
    let tok = r.sampler.sample(logits);
    r.out.push(tok);
    emit(tok);
    r.done = finish_after(req, tok, r.out.len(), r.cache.len(), ctx);
    tok
}

/// Whether a sequence is done once `tok` is committed as its `out_len`-th output token:
/// a stop id, the token budget, or no room for another position in the context (`cache_len`:
/// its KV cache length, which does not hold `tok` yet).
pub(crate) fn finish_after(
    req: &GenRequest,
    tok: u32,
    out_len: usize,
    cache_len: usize,
    ctx: usize,
) -> Option<FinishReason> {
    if req.stop_ids.contains(&tok) {
        Some(FinishReason::Eos)
    } else if out_len >= req.max_new_tokens {
        Some(FinishReason::Length)
    } else if cache_len + 1 > ctx {
        Some(FinishReason::Context)
    } else {
        None
    }
}
