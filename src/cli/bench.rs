//! `specmoe bench`: prefill and decode throughput of a checkpoint, or of random weights with
//! the real shapes of a published model (`--shape mixtral-8x7b --layers 2`).

use super::generate::tokens_per_step;
use super::{draft_dir, load_draft, load_model, DraftOverlap, RunOpts, BUNDLED_DRAFT};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use specmoe::engine::{generate, GenRequest, GenStats};
use specmoe::model::Model;
use specmoe::sampling::SamplingParams;
use specmoe::speculative::{
    generate_speculative_with, parse_serial_draft_len, DraftLen, SpecOptions, SpecStats,
};
use specmoe::synthetic;
use specmoe_cpu_kernels::{dispatch, DType};
use std::path::PathBuf;
use std::time::Instant;

/// Output format of `bench`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchFormat {
    /// A human-readable table.
    Table,
    /// One JSON object.
    Json,
}

/// Weight dtype of random `--shape` weights.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    /// bfloat16 (as published).
    Bf16,
    /// float16.
    F16,
    /// float32.
    F32,
}

/// `specmoe bench` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BenchKind {
    /// Measure this machine's ceilings (DRAM bandwidth, FMA peak) and each kernel's share of
    /// the ceiling that bounds it.
    Kernels(KernelArgs),
}

/// Arguments of `specmoe bench kernels`.
#[derive(Args, Debug)]
pub struct KernelArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = BenchFormat::Table)]
    format: BenchFormat,
    /// Shorter runs (256 MiB bandwidth buffer, 3 repetitions): seconds instead of tens.
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    pub(super) run: RunOpts,
}

/// Arguments of `specmoe bench`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub(super) kind: Option<BenchKind>,
    /// Model directory to benchmark.
    #[arg(long, conflicts_with = "shape", required_unless_present = "shape")]
    model: Option<PathBuf>,
    /// Random weights with the shapes of this model: mixtral-8x7b or mixtral-8x22b.
    #[arg(long)]
    shape: Option<String>,
    /// With --shape: keep only the first N decoder layers (so the model fits in RAM).
    #[arg(long, requires = "shape")]
    layers: Option<usize>,
    /// With --shape: weight dtype.
    #[arg(long, value_enum, default_value_t = WeightDtype::Bf16)]
    dtype: WeightDtype,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prompt tokens per sequence (random ids).
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// Tokens generated per sequence (EOS ignored).
    #[arg(long, default_value_t = 32)]
    gen_len: usize,
    /// Seed of the random weights and prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = BenchFormat::Table)]
    format: BenchFormat,
    /// Prompt text (tokenized, the same for every sequence) instead of random ids;
    /// `--prompt-len` then caps its length.
    #[arg(long)]
    prompt: Option<String>,
    /// Also run speculative decoding with this draft (bare `--draft`: the bundled draft).
    #[arg(long, num_args = 0..=1, default_missing_value = BUNDLED_DRAFT, requires = "model")]
    draft: Option<PathBuf>,
    /// Draft lengths to measure, comma-separated (e.g. `1,2,4,8`), or `auto`.
    #[arg(long, default_value = "1,2,4,8", requires = "draft")]
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
    /// Rounds: each round runs the baseline and then every draft length, side by side; the
    /// report gives each configuration's median round (and each speed-up as the median of
    /// its per-round ratios), so a noisy neighbour spoils one round, not the figure.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[command(flatten)]
    pub(super) run: RunOpts,
}

/// One benchmark result.
///
/// `weight_gbps` = weight bytes read per decode step ÷ decode step time ÷ 1e9, where the
/// bytes of a step are those of every matrix the step reads once: attention projections,
/// router, each expert chosen by at least one token of the step, dense MLPs and the LM head.
#[derive(Serialize, Debug)]
pub struct BenchReport {
    /// Model directory or shape name.
    pub model: String,
    /// Decoder layers.
    pub layers: usize,
    /// Weight dtype.
    pub dtype: String,
    /// Total weight bytes.
    pub weight_bytes: usize,
    /// Kernel path.
    pub isa: String,
    /// Worker threads.
    pub threads: usize,
    /// Sequences.
    pub batch: usize,
    /// Prompt tokens per sequence.
    pub prompt_len: usize,
    /// Generated tokens per sequence.
    pub gen_len: usize,
    /// Seconds to build or load the weights.
    pub load_seconds: f64,
    /// Prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Generated tokens per second during decode (all sequences).
    pub decode_tok_s: f64,
    /// Mean seconds per decode step.
    pub decode_step_seconds: f64,
    /// Mean weight bytes read per decode step.
    pub weight_bytes_per_step: f64,
    /// Effective weight bandwidth of decode, GB/s (see the type's docs).
    pub weight_gbps: f64,
    /// Rounds measured (`--repeat`); every figure is a median over them.
    pub rounds: usize,
    /// Raw counters of the median baseline round.
    pub stats: GenStats,
    /// Token ids the draft's LM head computes (`--draft-vocab`; absent: the whole vocabulary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft_vocab: Option<usize>,
    /// `--serial-draft-len` (with `--draft`): `auto` or the cap on serially drafted blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_draft_len: Option<String>,
    /// Speculative runs, one per draft length (with `--draft`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub speculative: Vec<SpecRow>,
}

/// One speculative run of `bench --draft`, measured in the same invocation as the baseline.
#[derive(Serialize, Debug)]
pub struct SpecRow {
    /// `--draft-len` value (a number or `auto`).
    pub draft_len: String,
    /// Mean draft length used.
    pub mean_draft_len: f64,
    /// Accepted ÷ proposed draft tokens.
    pub acceptance_rate: f64,
    /// Mean tokens committed per sequence per target step.
    pub tokens_per_step: f64,
    /// Target verification steps.
    pub target_steps: usize,
    /// Generated tokens per second during decode (median round).
    pub decode_tok_s: f64,
    /// Median over rounds of this run's `decode_tok_s` ÷ the same round's baseline (no draft).
    pub speedup: f64,
    /// Whether the draft drafted the next block during verification (`--draft-overlap`).
    pub overlap: bool,
    /// Sequence-steps whose draft tokens were drafted during the previous verification.
    pub overlap_steps: usize,
    /// Seconds in draft steps outside verification.
    pub draft_seconds: f64,
    /// Seconds in target verification.
    pub verify_seconds: f64,
    /// Whether the greedy output equals the baseline's (it must).
    pub identical_output: bool,
}

/// Runs `specmoe bench kernels`.
fn run_kernels(a: KernelArgs) -> Result<()> {
    let report = specmoe::kernel_bench::run(a.run.threads, a.quick);
    match a.format {
        BenchFormat::Json => println!("{}", serde_json::to_string(&report)?),
        BenchFormat::Table => print!("{}", report.to_table()),
    }
    Ok(())
}

/// Runs `specmoe bench`.
pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(BenchKind::Kernels(k)) = a.kind {
        return run_kernels(k);
    }
    if a.batch == 0 || a.prompt_len == 0 || a.gen_len == 0 {
        bail!("--batch, --prompt-len and --gen-len must be at least 1");
    }
    let t0 = Instant::now();
    let (model, name, dtype) = match (&a.model, &a.shape) {
        (Some(dir), _) => {
            let m = load_model(dir, &a.run)?;
            let dt = m.cfg.dtype.clone().unwrap_or_else(|| "?".into());
            (m, dir.display().to_string(), dt)
        }
        (None, Some(shape)) => {
            let cfg = synthetic::shape_config(shape, a.layers)?;
            let dt = match a.dtype {
                WeightDtype::Bf16 => DType::BF16,
                WeightDtype::F16 => DType::F16,
                WeightDtype::F32 => DType::F32,
            };
            eprintln!(
                "generating random {shape} weights ({} layers, {dt})…",
                cfg.num_layers
            );
            let store = synthetic::random_mixtral(&cfg, dt, a.seed);
            (
                Model::from_store(cfg, &store, a.run.kv_dtype.into())?,
                shape.clone(),
                dt.to_string(),
            )
        }
        (None, None) => bail!("give --model DIR or --shape NAME"),
    };
    let load_seconds = t0.elapsed().as_secs_f64();
    if a.prompt_len + a.gen_len > model.context_len() {
        bail!(
            "--prompt-len + --gen-len = {} exceeds the model's context of {}",
            a.prompt_len + a.gen_len,
            model.context_len()
        );
    }
    let vocab = model.cfg.vocab_size as u64;
    let mut st = a.seed.wrapping_add(0x5EED);
    let text_ids = match (&a.prompt, &a.model) {
        (Some(p), Some(dir)) => {
            let mut ids = specmoe::tokenizer::Tokenizer::from_dir(dir)?.encode(p)?;
            ids.truncate(a.prompt_len);
            Some(ids)
        }
        (Some(_), None) => {
            bail!("--prompt needs --model (random --shape weights have no tokenizer)")
        }
        _ => None,
    };
    let reqs: Vec<GenRequest> = (0..a.batch)
        .map(|_| GenRequest {
            prompt_ids: match &text_ids {
                Some(ids) => ids.clone(),
                None => (0..a.prompt_len)
                    .map(|_| {
                        st = st
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (3 + (st >> 33) % (vocab - 3)) as u32
                    })
                    .collect(),
            },
            max_new_tokens: a.gen_len,
            sampling: SamplingParams::default(),
            stop_ids: vec![],
        })
        .collect();
    if a.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let draft = match (draft_dir(&a.draft), &a.model) {
        (Some(ddir), Some(mdir)) => Some(load_draft(&model, mdir, &ddir, &a.run, &a.draft_vocab)?),
        _ => None,
    };
    let serial_draft_len = parse_serial_draft_len(&a.serial_draft_len)?;
    let lens: Vec<(String, DraftLen)> = if draft.is_some() {
        a.draft_len
            .split(',')
            .map(|x| {
                let l = x.trim().to_string();
                DraftLen::parse(&l).map(|d| (l, d))
            })
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    // A warm-up run of each model, not measured: the first run pays the page faults on the
    // mmapped weights and the pool threads' start (it made the first round's baseline up
    // to 2× slower).
    generate(&model, &reqs, |_, _| {})?;
    let draft_vocab = draft.as_ref().and_then(|d| d.1);
    let draft = draft.map(|d| d.0);
    if let (Some(d), Some((_, dl))) = (&draft, lens.first()) {
        let opts = SpecOptions {
            draft_len: *dl,
            overlap: a.draft_overlap.enabled(),
            serial_draft_len,
        };
        generate_speculative_with(&model, d, &reqs, opts, |_, _| {})?;
    }
    // Round r: the baseline, then every draft length, back to back.
    let mut base_runs: Vec<GenStats> = Vec::new();
    let mut spec_runs: Vec<Vec<(GenStats, SpecStats, bool)>> = vec![Vec::new(); lens.len()];
    for _ in 0..a.repeat {
        let (base_out, stats) = generate(&model, &reqs, |_, _| {})?;
        for (j, (_, dl)) in lens.iter().enumerate() {
            let d = draft.as_ref().expect("draft loaded with draft lengths");
            let opts = SpecOptions {
                draft_len: *dl,
                overlap: a.draft_overlap.enabled(),
                serial_draft_len,
            };
            let (out, s, sp) = generate_speculative_with(&model, d, &reqs, opts, |_, _| {})?;
            let identical = out
                .iter()
                .zip(&base_out)
                .all(|(x, y)| x.output_ids == y.output_ids);
            spec_runs[j].push((s, sp, identical));
        }
        base_runs.push(stats);
    }
    let base_rate: Vec<f64> = base_runs.iter().map(|s| s.decode_tok_s()).collect();
    let speculative: Vec<SpecRow> = lens
        .iter()
        .zip(&spec_runs)
        .map(|((l, _), runs)| {
            let rates: Vec<f64> = runs.iter().map(|(s, _, _)| s.decode_tok_s()).collect();
            let ratios: Vec<f64> = rates
                .iter()
                .zip(&base_rate)
                .map(|(r, b)| r / b.max(1e-12))
                .collect();
            let (s, sp, _) = &runs[median_index(&rates)];
            SpecRow {
                draft_len: l.clone(),
                mean_draft_len: sp.mean_draft_len,
                acceptance_rate: sp.acceptance_rate(),
                tokens_per_step: tokens_per_step(sp),
                target_steps: sp.target_steps,
                decode_tok_s: s.decode_tok_s(),
                speedup: ratios[median_index(&ratios)],
                overlap: sp.overlap,
                overlap_steps: sp.overlap_steps,
                draft_seconds: sp.draft_seconds,
                verify_seconds: sp.verify_seconds,
                identical_output: runs.iter().all(|r| r.2),
            }
        })
        .collect();
    let stats = base_runs.swap_remove(median_index(&base_rate));
    let steps = stats.decode_steps.max(1) as f64;
    let r = BenchReport {
        model: name,
        layers: model.cfg.num_layers,
        dtype,
        weight_bytes: model.weight_bytes,
        isa: dispatch::active().to_string(),
        threads: rayon::current_num_threads(),
        batch: a.batch,
        prompt_len: a.prompt_len,
        gen_len: a.gen_len,
        rounds: a.repeat,
        load_seconds,
        prefill_tok_s: stats.prefill_tok_s(),
        decode_tok_s: stats.decode_tok_s(),
        decode_step_seconds: stats.decode_seconds / steps,
        weight_bytes_per_step: stats.decode_weight_bytes as f64 / steps,
        weight_gbps: stats.decode_weight_gbps(),
        stats,
        draft_vocab,
        serial_draft_len: (!speculative.is_empty())
            .then(|| serial_draft_len.map_or_else(|| "auto".into(), |n| n.to_string())),
        speculative,
    };
    match a.format {
        BenchFormat::Json => println!("{}", serde_json::to_string(&r)?),
        BenchFormat::Table => {
            println!("| model | layers | dtype | isa | threads | batch | pp | tg | prefill tok/s | decode tok/s | GB/step | weight GB/s |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.2} | {:.3} | {:.2} |",
                r.model,
                r.layers,
                r.dtype,
                r.isa,
                r.threads,
                r.batch,
                r.prompt_len,
                r.gen_len,
                r.prefill_tok_s,
                r.decode_tok_s,
                r.weight_bytes_per_step / 1e9,
                r.weight_gbps
            );
            if !r.speculative.is_empty() {
                println!();
                println!(
                    "speculative decoding, median of {} rounds (speed-up: median of per-round ratios to the baseline); draft LM head: {}; serial draft blocks: {}",
                    r.rounds,
                    match r.draft_vocab {
                        Some(n) => format!("{n} most frequent tokens"),
                        None => "whole vocabulary".into(),
                    },
                    match serial_draft_len {
                        Some(n) => format!("at most {n}"),
                        None => "auto".into(),
                    }
                );
                println!("| draft len | mean k | acceptance | tokens/step | target steps | overlapped | decode tok/s | speed-up | identical |");
                println!("|---|---|---|---|---|---|---|---|---|");
                for s in &r.speculative {
                    println!(
                        "| {} | {:.2} | {:.1} % | {:.2} | {} | {} | {:.2} | {:.2}x | {} |",
                        s.draft_len,
                        s.mean_draft_len,
                        100.0 * s.acceptance_rate,
                        s.tokens_per_step,
                        s.target_steps,
                        if s.overlap {
                            s.overlap_steps.to_string()
                        } else {
                            "off".into()
                        },
                        s.decode_tok_s,
                        s.speedup,
                        s.identical_output
                    );
                }
            }
        }
    }
    Ok(())
}

/// Index of the median of `v` (the upper median for an even length; `v` non-empty).
fn median_index(v: &[f64]) -> usize {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    idx[v.len() / 2]
}
