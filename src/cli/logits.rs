//! `specmoe logits`: one forward pass over a prompt, logits written to safetensors.

use super::{load_model, model_dir, parse_ids, RunOpts};
use anyhow::{bail, Context, Result};
use clap::Args;
use safetensors::tensor::{Dtype, TensorView};
use specmoe::model::{LogitRows, SeqStep};
use specmoe::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// Arguments of `specmoe logits`.
#[derive(Args, Debug)]
pub struct LogitsArgs {
    /// Model directory (Hugging Face layout); default: the bundled model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt text, tokenized as transformers' `tokenizer(text)`.
    #[arg(
        long,
        conflicts_with = "token_ids",
        required_unless_present = "token_ids"
    )]
    prompt: Option<String>,
    /// Comma-separated prompt token ids.
    #[arg(long)]
    token_ids: Option<String>,
    /// Output file: `logits` F32 `[n_tokens, vocab]` and `input_ids` I64 `[n]`.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    pub(super) run: RunOpts,
}

/// Runs `specmoe logits`.
pub fn run(a: LogitsArgs) -> Result<()> {
    check_writable(&a.out)?;
    let dir = model_dir(&a.model);
    let model = load_model(&dir, &a.run)?;
    let ids = match (&a.prompt, &a.token_ids) {
        (Some(p), _) => Tokenizer::from_dir(&dir)?.encode(p)?,
        (None, Some(t)) => parse_ids(t)?,
        (None, None) => bail!("give --prompt or --token-ids"),
    };
    if ids.is_empty() {
        bail!("the prompt has no tokens");
    }
    let mut cache = model.new_cache();
    let out = model.forward(
        &mut [SeqStep {
            tokens: &ids,
            cache: &mut cache,
            logits: LogitRows::All,
        }],
        false,
    )?;
    let logits = &out.logits[0];
    let lbytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let ibytes: Vec<u8> = ids.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect();
    let views = vec![
        (
            "logits".to_string(),
            TensorView::new(Dtype::F32, vec![ids.len(), model.cfg.vocab_size], &lbytes)?,
        ),
        (
            "input_ids".to_string(),
            TensorView::new(Dtype::I64, vec![ids.len()], &ibytes)?,
        ),
    ];
    let bytes = safetensors::tensor::serialize(views, None)?;
    write_atomic(&a.out, &bytes)?;
    eprintln!(
        "wrote logits [{}, {}] to {}",
        ids.len(),
        model.cfg.vocab_size,
        a.out.display()
    );
    Ok(())
}

/// Fails early, before any work, if `out` cannot be created in its directory.
fn check_writable(out: &Path) -> Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!(
            "--out {}: directory {} does not exist",
            out.display(),
            dir.display()
        );
    }
    if out.is_dir() {
        bail!("--out {}: is a directory", out.display());
    }
    let probe = tempfile::NamedTempFile::new_in(&dir).with_context(|| {
        format!(
            "--out {}: directory {} is not writable",
            out.display(),
            dir.display()
        )
    })?;
    drop(probe);
    Ok(())
}

/// Writes `bytes` to a temporary file beside `out`, then renames it over `out`, so a failure
/// never leaves a half-written file.
fn write_atomic(out: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("--out {}", out.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("--out {}", out.display()))?;
    tmp.persist(out)
        .with_context(|| format!("--out {}", out.display()))?;
    Ok(())
}
