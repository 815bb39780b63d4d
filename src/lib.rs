//! specmoe: Mixture-of-Experts inference with expert offloading and speculative decoding.
//!
//! This crate loads Hugging Face checkpoints ([`checkpoint`], [`config`]), runs the forward
//! pass of every supported architecture on the CPU kernels of `specmoe-cpu-kernels`
//! ([`model`]), tokenizes ([`tokenizer`]), samples ([`sampling`]) and generates for a batch
//! of prompts ([`engine`]). See ARCHITECTURE.md for the map of the code.

pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod error;
pub mod kernel_bench;
pub mod model;
pub mod sampling;
pub mod speculative;
pub mod synthetic;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};

/// The small Mixtral-architecture checkpoint bundled in the repository, used by `generate`
/// and `logits` when no `--model` is given: `$SPECMOE_MODEL` if set, else
/// `models/tiny-mixtral` of the source tree.
pub fn bundled_model_dir() -> std::path::PathBuf {
    match std::env::var_os("SPECMOE_MODEL") {
        Some(p) => p.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join("tiny-mixtral"),
    }
}

/// The draft model bundled with [`bundled_model_dir`], used by `--draft` given without a
/// directory: `$SPECMOE_DRAFT` if set, else `models/tiny-draft` of the source tree.
pub fn bundled_draft_dir() -> std::path::PathBuf {
    match std::env::var_os("SPECMOE_DRAFT") {
        Some(p) => p.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join("tiny-draft"),
    }
}
