//! Argument parsing (clap derive) and the options shared by every subcommand.

mod bench;
mod generate;
mod logits;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use specmoe::model::Model;
use specmoe::speculative::vocab::{self, DraftVocab};
use specmoe_cpu_kernels::{dispatch, DType};
use std::path::PathBuf;

/// Mixture-of-Experts inference with expert offloading and speculative decoding.
#[derive(Parser, Debug)]
#[command(name = "specmoe", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt, token ids, or a JSONL file of prompts (one batch).
    Generate(generate::GenerateArgs),
    /// Write the logits of one forward pass over a prompt to a safetensors file.
    Logits(logits::LogitsArgs),
    /// Benchmark decode on a checkpoint or on random weights of a real model shape.
    Bench(bench::BenchArgs),
}

/// Options every subcommand that runs a model takes.
#[derive(Args, Debug, Clone)]
pub struct RunOpts {
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Kernel instruction-set path: scalar, avx2, avx512, neon (default: the fastest the CPU has).
    #[arg(long)]
    pub isa: Option<String>,
    /// Element type of the KV cache.
    #[arg(long, value_enum, default_value_t = KvDtype::F32)]
    pub kv_dtype: KvDtype,
    /// Print the kernel path, model and thread count on stderr.
    #[arg(short, long)]
    pub verbose: bool,
}

/// `--draft-overlap`: whether the draft drafts the next block while the target verifies.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DraftOverlap {
    /// On when there are two worker threads or more.
    Auto,
    /// Always (with one thread the two still alternate, losing nothing but the overlap).
    On,
    /// Never: draft, then verify.
    Off,
}

impl DraftOverlap {
    /// Resolves `auto` against the current rayon pool.
    pub fn enabled(self) -> bool {
        match self {
            DraftOverlap::Auto => rayon::current_num_threads() >= 2,
            DraftOverlap::On => true,
            DraftOverlap::Off => false,
        }
    }
}

/// KV cache element type (`--kv-dtype`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

impl From<KvDtype> for DType {
    fn from(k: KvDtype) -> DType {
        match k {
            KvDtype::F32 => DType::F32,
            KvDtype::F16 => DType::F16,
            KvDtype::Bf16 => DType::BF16,
        }
    }
}

impl RunOpts {
    /// Applies `--threads` and `--isa` process-wide.
    pub fn apply(&self) -> Result<()> {
        if let Some(n) = self.threads {
            if n == 0 {
                anyhow::bail!("--threads must be at least 1");
            }
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .context("--threads: cannot configure the thread pool")?;
        }
        if let Some(name) = &self.isa {
            let isa = dispatch::resolve(name).context("--isa")?;
            dispatch::set_active(isa).context("--isa")?;
        }
        if self.verbose {
            eprintln!(
                "kernels: {} path, {} threads",
                dispatch::active(),
                rayon::current_num_threads()
            );
        }
        Ok(())
    }
}

/// The model directory from `--model`, or the bundled checkpoint (said on stderr).
pub fn model_dir(arg: &Option<PathBuf>) -> PathBuf {
    match arg {
        Some(p) => p.clone(),
        None => {
            let p = specmoe::bundled_model_dir();
            eprintln!(
                "using the bundled model {} (pass --model DIR for another)",
                p.display()
            );
            p
        }
    }
}

/// The value a bare `--draft` stands for: the bundled draft model.
pub const BUNDLED_DRAFT: &str = "@bundled";

/// The draft directory from `--draft [DIR]`: `None` without the flag, the bundled draft for
/// a bare `--draft`.
pub fn draft_dir(arg: &Option<PathBuf>) -> Option<PathBuf> {
    arg.as_ref().map(|p| {
        if p.as_os_str() == BUNDLED_DRAFT {
            let d = specmoe::bundled_draft_dir();
            eprintln!("using the bundled draft model {}", d.display());
            d
        } else {
            p.clone()
        }
    })
}

/// Loads a draft model, checks that it shares the target's tokenizer and restricts its LM
/// head as `--draft-vocab` asks; returns it with the number of token ids its head computes
/// (`None`: the whole vocabulary).
pub fn load_draft(
    target: &Model,
    target_dir: &std::path::Path,
    dir: &std::path::Path,
    opts: &RunOpts,
    vocab: &str,
) -> Result<(Model, Option<usize>)> {
    let choice = DraftVocab::parse(vocab)?;
    let mut d = load_model(dir, opts).context("--draft")?;
    let vocab_of = |p: &std::path::Path| {
        specmoe::tokenizer::Tokenizer::from_dir(p)
            .ok()
            .map(|t| t.vocab())
    };
    let (tv, dv) = (vocab_of(target_dir), vocab_of(dir));
    specmoe::speculative::check_pair(target, &d, tv.as_ref(), dv.as_ref()).with_context(|| {
        format!(
            "target {} and draft {}",
            target_dir.display(),
            dir.display()
        )
    })?;
    let n = vocab::apply(&mut d, dir, choice).context("--draft-vocab")?;
    if opts.verbose {
        match n {
            Some(n) => eprintln!("draft LM head: the {n} most frequent tokens"),
            None => eprintln!("draft LM head: the whole vocabulary"),
        }
    }
    Ok((d, n))
}

/// Loads the model of `dir`, naming the directory in errors.
pub fn load_model(dir: &std::path::Path, opts: &RunOpts) -> Result<Model> {
    let m = Model::load(dir, opts.kv_dtype.into())
        .with_context(|| format!("loading model {}", dir.display()))?;
    if opts.verbose {
        eprintln!(
            "model: {} ({}), {} layers, {:.1} MB of weights",
            dir.display(),
            m.cfg.arch.hf_name(),
            m.cfg.num_layers,
            m.weight_bytes as f64 / 1e6
        );
    }
    Ok(m)
}

/// Parses a comma-separated list of token ids (`--token-ids 1,2,3`).
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(|x| x.trim())
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<u32>()
                .with_context(|| format!("--token-ids: '{x}' is not a token id"))
        })
        .collect()
}

/// Parses the command line and runs the subcommand.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    let opts = match &cli.command {
        Command::Generate(a) => &a.run,
        Command::Logits(a) => &a.run,
        Command::Bench(a) => match &a.kind {
            Some(bench::BenchKind::Kernels(k)) => &k.run,
            None => &a.run,
        },
    };
    opts.apply()?;
    // The whole command runs on a worker of the pool (see `engine::on_worker`).
    specmoe::engine::on_worker(|| match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Bench(a) => bench::run(a),
    })
}
