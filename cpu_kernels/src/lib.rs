//! SIMD CPU kernels for specmoe.
//!
//! Every kernel has a scalar reference and, where it pays, vectorised paths (AVX-512F,
//! AVX2+FMA+F16C, NEON) chosen once at start-up by [`dispatch::active`]; the `*_with`
//! variants take an explicit [`Isa`] so tests can force each path.
//!
//! Layout conventions (all row-major):
//! - activations: f32 `[tokens, features]`;
//! - weights: the Hugging Face layout `[out_features, in_features]` in f32, f16 or bf16,
//!   read in their stored dtype and converted in registers ([`matmul::WeightMatrix`]);
//! - attention queries/outputs: f32 `[n, heads, head_dim]`; KV cache described by
//!   [`attention::KvLayout`].

pub mod activation;
pub mod attention;
pub mod dispatch;
pub mod dtype;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod select;

pub use dispatch::Isa;
pub use dtype::DType;
