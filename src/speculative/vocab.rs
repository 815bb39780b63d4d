//! The draft's vocabulary (`--draft-vocab`): restrict the draft's LM head to the most
//! frequent tokens (FR-Spec, Zhao et al. 2025). The draft then proposes only those tokens;
//! the target still verifies over the whole vocabulary, so output is unchanged for greedy
//! requests and keeps the target's distribution for sampled ones (a token outside the
//! subset has `q = 0`, so it comes only from the residual `max(0, p − q)`).
//!
//! Token frequencies come from `token_counts.json` in the draft's directory:
//! `{"corpus": "<what was counted>", "counts": [c_0, …, c_{vocab−1}]}` (occurrences of each
//! token id in a corpus tokenized with the shared tokenizer; `tools/train_pair.py` writes it
//! for the bundled draft).

use crate::error::{Error, Result};
use crate::model::Model;
use std::path::{Path, PathBuf};

/// File name of the token counts beside a draft checkpoint.
pub const COUNTS_FILE: &str = "token_counts.json";

/// How much of the vocabulary the draft's LM head computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DraftVocab {
    /// The whole vocabulary.
    All,
    /// The most frequent quarter of the vocabulary when the draft has `token_counts.json`
    /// (FR-Spec's 32 K of Llama 3's 128 K), else the whole vocabulary.
    Auto,
    /// The `n` most frequent tokens (needs `token_counts.json`).
    Top(usize),
}

impl DraftVocab {
    /// Parses `all`, `auto` or a token count.
    ///
    /// Errors: anything else, or `0`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "all" => Ok(DraftVocab::All),
            "auto" => Ok(DraftVocab::Auto),
            n => match n.parse::<usize>() {
                Ok(0) | Err(_) => Err(Error::Input(format!(
                    "--draft-vocab: expected 'all', 'auto' or a positive token count, got '{s}'"
                ))),
                Ok(n) => Ok(DraftVocab::Top(n)),
            },
        }
    }
}

/// Reads `dir/token_counts.json`; `Ok(None)` when the file does not exist.
///
/// Errors: the file unreadable, not JSON, without a `counts` array of non-negative integers,
/// or with a length other than `vocab`.
pub fn read_counts(dir: &Path, vocab: usize) -> Result<Option<Vec<u64>>> {
    let path = dir.join(COUNTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { path, source }),
    };
    let bad = |msg: String| Error::Config {
        path: path.clone(),
        msg,
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let counts: Vec<u64> = v
        .get("counts")
        .and_then(|c| c.as_array())
        .ok_or_else(|| bad("expected a \"counts\" array of per-token counts".into()))?
        .iter()
        .map(|c| c.as_u64())
        .collect::<Option<_>>()
        .ok_or_else(|| bad("\"counts\" must hold non-negative integers".into()))?;
    if counts.len() != vocab {
        return Err(bad(format!(
            "\"counts\" has {} entries, the vocabulary has {vocab}",
            counts.len()
        )));
    }
    Ok(Some(counts))
}

/// The `n` most frequent token ids, most frequent first (ties to the lower id).
pub fn most_frequent(counts: &[u64], n: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..counts.len() as u32).collect();
    ids.sort_by(|&a, &b| counts[b as usize].cmp(&counts[a as usize]).then(a.cmp(&b)));
    ids.truncate(n);
    ids
}

/// Applies `choice` to the draft model loaded from `dir`; returns the number of token ids its
/// LM head now computes (`None`: the whole vocabulary).
///
/// Errors: `Top(n)` without `dir/token_counts.json` or with `n` above the vocabulary size;
/// a malformed counts file ([`read_counts`]).
pub fn apply(draft: &mut Model, dir: &Path, choice: DraftVocab) -> Result<Option<usize>> {
    let vocab = draft.cfg.vocab_size;
    let n = match choice {
        DraftVocab::All => None,
        DraftVocab::Auto => Some(vocab.div_ceil(4)),
        DraftVocab::Top(n) if n > vocab => {
            return Err(Error::Input(format!(
                "--draft-vocab {n}: the draft's vocabulary has only {vocab} tokens"
            )))
        }
        DraftVocab::Top(n) => Some(n),
    };
    let Some(n) = n.filter(|&n| n < vocab) else {
        draft.restrict_head(None)?;
        return Ok(None);
    };
    match read_counts(dir, vocab)? {
        Some(counts) => {
            draft.restrict_head(Some(&most_frequent(&counts, n)))?;
            Ok(Some(n))
        }
        None if choice == DraftVocab::Auto => {
            draft.restrict_head(None)?;
            Ok(None)
        }
        None => Err(Error::Input(format!(
            "--draft-vocab {n}: {} not found (token counts of a corpus are needed to rank \
             the draft's vocabulary; use --draft-vocab all)",
            PathBuf::from(dir).join(COUNTS_FILE).display()
        ))),
    }
}
