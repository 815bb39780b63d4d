//! The library's error type: every failure names the file, tensor or flag at fault and what
//! was expected.

use std::path::PathBuf;

/// Errors from loading checkpoints, tokenizing, running the model and writing outputs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `config.json` (or another JSON file) is malformed or lacks a required field.
    #[error("{path}: {msg}")]
    Config {
        /// The JSON file.
        path: PathBuf,
        /// What is wrong and what was expected.
        msg: String,
    },
    /// `config.json` names an architecture specmoe does not implement.
    #[error("{path}: unknown architecture '{arch}'; supported: {supported}")]
    UnknownArchitecture {
        /// The config file.
        path: PathBuf,
        /// The `architectures[0]` entry.
        arch: String,
        /// Comma-separated supported architectures.
        supported: String,
    },
    /// A safetensors file is missing, truncated or malformed.
    #[error("{path}: {msg}")]
    Checkpoint {
        /// The safetensors (or index) file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A tensor is missing, or has the wrong shape or dtype.
    #[error("tensor '{name}' ({origin}): {msg}")]
    Tensor {
        /// Hugging Face tensor name.
        name: String,
        /// Where it was looked for (checkpoint directory or file).
        origin: String,
        /// What was found and what was expected.
        msg: String,
    },
    /// The tokenizer could not be loaded or failed on the input.
    #[error("tokenizer {path}: {msg}")]
    Tokenizer {
        /// `tokenizer.json`.
        path: PathBuf,
        /// The underlying message.
        msg: String,
    },
    /// Bad user input: a prompt beyond the context, a token id outside the vocabulary, …
    #[error("{0}")]
    Input(String),
    /// A feature of a checkpoint or a flag that specmoe does not support yet.
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// Shorthand for `Result<T, specmoe::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
