//! Tokenizer of a model directory (`tokenizer.json`) through the `tokenizers` crate, used
//! offline. Prompts are encoded as transformers' `tokenizer(text)` does, with the special
//! tokens of the post-processor (e.g. BOS); output is decoded incrementally as valid UTF-8.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A loaded `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`.
    ///
    /// Errors: the file is missing or not a tokenizer the `tokenizers` crate can read.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::Tokenizer {
                path,
                msg: "file not found".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            msg: format!("cannot be read: {e}"),
        })?;
        Ok(Tokenizer { inner, path })
    }

    /// Token ids of `text`, with the post-processor's special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                msg: format!("encoding failed: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer {
            path: self.path.clone(),
            msg: format!("decoding failed: {e}"),
        })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The full vocabulary (token string → id), including added tokens.
    pub fn vocab(&self) -> std::collections::HashMap<String, u32> {
        self.inner.get_vocab(true)
    }

    /// The `tokenizer.json` this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Turns a stream of generated ids into text pieces that are always valid, complete UTF-8:
/// a piece whose bytes end inside a multi-byte character is held back until it completes.
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: String,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    /// An empty stream.
    pub fn new() -> Self {
        StreamDecoder {
            ids: Vec::new(),
            emitted: String::new(),
        }
    }

    /// Adds `id`; returns the new text, if any is complete.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || !text.starts_with(&self.emitted) {
            return Ok(None);
        }
        let piece = text[self.emitted.len()..].to_string();
        self.emitted = text;
        Ok((!piece.is_empty()).then_some(piece))
    }

    /// Whatever is left at the end of the stream (including a trailing replacement char).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<Option<String>> {
        let text = tok.decode(&self.ids)?;
        let piece = match text.strip_prefix(self.emitted.as_str()) {
            Some(rest) => rest.to_string(),
            None => String::new(),
        };
        self.emitted = text;
        Ok((!piece.is_empty()).then_some(piece))
    }
}
