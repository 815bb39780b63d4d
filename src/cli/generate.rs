//! `specmoe generate`: text from a prompt, token ids, or a JSONL batch of prompts.

use super::{
    draft_dir, load_draft, load_model, model_dir, parse_ids, DraftOverlap, RunOpts, BUNDLED_DRAFT,
};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use specmoe::checkpoint::GenerationConfig;
use specmoe::engine::{generate, GenRequest};
use specmoe::sampling::SamplingParams;
use specmoe::speculative::{
    generate_speculative_with, parse_serial_draft_len, DraftLen, SpecOptions, SpecStats,
};
use specmoe::tokenizer::{StreamDecoder, Tokenizer};
use std::io::Write;
use std::path::PathBuf;

/// Output format of `generate`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Stream the continuation to stdout; stats on stderr.
    Text,
    /// One JSON object per prompt on stdout.
    Json,
}

/// Arguments of `specmoe generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model directory (Hugging Face layout); default: the bundled model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt text, tokenized as transformers' `tokenizer(text)`.
    #[arg(long, group = "input_kind", required_unless_present_any = ["token_ids", "input"])]
    prompt: Option<String>,
    /// Comma-separated prompt token ids.
    #[arg(long, group = "input_kind")]
    token_ids: Option<String>,
    /// JSONL file with a "prompt" field per line; all prompts run as one batch.
    #[arg(long, group = "input_kind")]
    input: Option<PathBuf>,
    /// Maximum new tokens per prompt.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not stop at EOS.
    #[arg(long)]
    ignore_eos: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Speculative decoding with this draft model (bare `--draft`: the bundled draft).
    #[arg(long, num_args = 0..=1, default_missing_value = BUNDLED_DRAFT)]
    draft: Option<PathBuf>,
    /// Draft length k: tokens proposed per step, or `auto` to pick it every step from the
    /// measured acceptance and step times (default 6: with the bundled pair on two threads,
    /// the best fixed k at batch 1 and tied with k = 4 at batch 4).
    #[arg(long, default_value = "6", requires = "draft")]
    draft_len: String,
    /// Draft the next block while the target verifies this one (auto: with ≥ 2 threads).
    #[arg(long, value_enum, default_value_t = DraftOverlap::Auto, requires = "draft")]
    draft_overlap: DraftOverlap,
    /// Longest block drafted serially (at the start and after a rejection, when no block
    /// was drafted during the last verification): a number, or `auto` (at most 3 with
    /// overlap, k without).
    #[arg(long, default_value = "auto", requires = "draft")]
    serial_draft_len: String,
    /// Draft LM head: `auto` (the most frequent quarter of the vocabulary when the draft
    /// has token_counts.json, FR-Spec), `all`, or a number of most frequent tokens.
    #[arg(long, default_value = "auto", requires = "draft")]
    draft_vocab: String,
    #[command(flatten)]
    pub(super) run: RunOpts,
}

fn validate(a: &GenerateArgs) -> Result<()> {
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        bail!(
            "--temperature must be a finite number ≥ 0, got {}",
            a.temperature
        );
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", a.top_p);
    }
    Ok(())
}

/// Reads the prompts of a JSONL file (`{"prompt": "..."}` per non-empty line).
fn read_jsonl(path: &PathBuf) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--input {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| {
            format!(
                "--input {}: line {} is not valid JSON",
                path.display(),
                i + 1
            )
        })?;
        let p = v.get("prompt").and_then(|p| p.as_str()).with_context(|| {
            format!(
                "--input {}: line {} has no string field \"prompt\"",
                path.display(),
                i + 1
            )
        })?;
        out.push(p.to_string());
    }
    if out.is_empty() {
        bail!("--input {}: no prompts", path.display());
    }
    Ok(out)
}

/// Runs `specmoe generate`.
pub fn run(a: GenerateArgs) -> Result<()> {
    validate(&a)?;
    let draft_len = DraftLen::parse(&a.draft_len)?;
    let serial_draft_len = parse_serial_draft_len(&a.serial_draft_len)?;
    let dir = model_dir(&a.model);
    let model = load_model(&dir, &a.run)?;
    let draft = match draft_dir(&a.draft) {
        Some(d) => Some(load_draft(&model, &dir, &d, &a.run, &a.draft_vocab)?.0),
        None => None,
    };
    let tok = Tokenizer::from_dir(&dir);
    let prompts: Vec<Vec<u32>> = if let Some(ids) = &a.token_ids {
        vec![parse_ids(ids)?]
    } else {
        let tok = tok.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let texts = match (&a.prompt, &a.input) {
            (Some(p), _) => vec![p.clone()],
            (None, Some(f)) => read_jsonl(f)?,
            _ => bail!("give --prompt, --token-ids or --input"),
        };
        texts
            .iter()
            .map(|t| tok.encode(t))
            .collect::<specmoe::Result<_>>()?
    };
    let gen_cfg = GenerationConfig::load(&dir)?;
    let stop_ids = if a.ignore_eos {
        vec![]
    } else if !gen_cfg.eos_token_ids.is_empty() {
        gen_cfg.eos_token_ids.clone()
    } else {
        model.cfg.eos_token_ids.clone()
    };
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    };
    let reqs: Vec<GenRequest> = prompts
        .iter()
        .map(|p| GenRequest {
            prompt_ids: p.clone(),
            max_new_tokens: a.max_new_tokens,
            sampling: sampling.clone(),
            stop_ids: stop_ids.clone(),
        })
        .collect();
    let stream = a.format == Format::Text && reqs.len() == 1 && tok.is_ok();
    let mut dec = StreamDecoder::new();
    let on_token = |_: usize, id: u32| {
        if stream {
            if let Ok(Some(piece)) = dec.push(tok.as_ref().expect("stream implies tokenizer"), id) {
                let mut o = std::io::stdout().lock();
                let _ = write!(o, "{piece}");
                let _ = o.flush();
            }
        }
    };
    let (outs, stats, spec) = match &draft {
        Some(d) => {
            let opts = SpecOptions {
                draft_len,
                overlap: a.draft_overlap.enabled(),
                serial_draft_len,
            };
            let (o, s, sp) = generate_speculative_with(&model, d, &reqs, opts, on_token)?;
            (o, s, Some(sp))
        }
        None => {
            let (o, s) = generate(&model, &reqs, on_token)?;
            (o, s, None)
        }
    };
    let mut stdout = std::io::stdout().lock();
    let text_of = |ids: &[u32]| -> String {
        match &tok {
            Ok(t) => t.decode(ids).unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    match a.format {
        Format::Text => {
            if stream {
                if let Ok(Some(rest)) = dec.finish(tok.as_ref().expect("stream implies tokenizer"))
                {
                    write!(stdout, "{rest}")?;
                }
                writeln!(stdout)?;
            } else {
                for (i, o) in outs.iter().enumerate() {
                    if reqs.len() > 1 {
                        writeln!(stdout, "--- prompt {i} ---")?;
                    }
                    match &tok {
                        Ok(_) => writeln!(stdout, "{}", text_of(&o.output_ids))?,
                        Err(_) => writeln!(stdout, "{:?}", o.output_ids)?,
                    }
                }
            }
        }
        Format::Json => {
            for (r, o) in reqs.iter().zip(&outs) {
                let line = json!({
                    "prompt_ids": r.prompt_ids,
                    "output_ids": o.output_ids,
                    "text": text_of(&o.output_ids),
                    "finish_reason": o.finish,
                    "stats": {
                        "prompt_tokens": stats.prompt_tokens,
                        "generated_tokens": stats.generated_tokens,
                        "prefill_tok_s": stats.prefill_tok_s(),
                        "decode_tok_s": stats.decode_tok_s(),
                        "prefill_seconds": stats.prefill_seconds,
                        "decode_seconds": stats.decode_seconds,
                        "batch": reqs.len(),
                        "speculative": spec.as_ref().map(spec_json),
                    }
                });
                writeln!(stdout, "{line}")?;
            }
        }
    }
    let spec_part = match &spec {
        Some(sp) => format!(
            ", draft length {} (mean {:.1}), acceptance {:.1} %, {:.2} tokens/step over {} target steps{}",
            sp.draft_len,
            sp.mean_draft_len,
            100.0 * sp.acceptance_rate(),
            tokens_per_step(sp),
            sp.target_steps,
            if sp.overlap {
                format!(", {} drafted during verification", sp.overlap_steps)
            } else {
                String::new()
            }
        ),
        None => String::new(),
    };
    eprintln!(
        "prompt tokens: {}, prefill: {:.1} tok/s, decode: {:.2} tok/s ({} tokens in {:.2} s, batch {}){spec_part}",
        stats.prompt_tokens,
        stats.prefill_tok_s(),
        stats.decode_tok_s(),
        stats.generated_tokens,
        stats.prefill_seconds + stats.decode_seconds,
        reqs.len()
    );
    Ok(())
}

/// Mean tokens committed per sequence per target step (accepted drafts + 1).
pub fn tokens_per_step(sp: &SpecStats) -> f64 {
    if sp.seq_steps == 0 {
        0.0
    } else {
        (sp.accepted + sp.seq_steps) as f64 / sp.seq_steps as f64
    }
}

/// The `speculative` object of JSON stats.
pub fn spec_json(sp: &SpecStats) -> serde_json::Value {
    json!({
        "draft_len": sp.draft_len,
        "mean_draft_len": sp.mean_draft_len,
        "acceptance_rate": sp.acceptance_rate(),
        "tokens_per_step": tokens_per_step(sp),
        "target_steps": sp.target_steps,
        "proposed": sp.proposed,
        "accepted": sp.accepted,
        "overlap": sp.overlap,
        "overlap_steps": sp.overlap_steps,
        "draft_seconds": sp.draft_seconds,
        "verify_seconds": sp.verify_seconds,
    })
}
