//! SIMD CPU kernels for specmoe.
//!
//! Every kernel has a scalar reference and, where it pays, vectorised paths (AVX-512F,
//! AVX2+FMA+F16C, NEON) chosen once at start-up by [`dispatch::active`]; the `*_with`
//! variants take an explicit [`Isa`] so tests can force each path.
//!
//! Paths: every vectorised kernel is written once, generic over a small vector trait
//! (`simd::Simd`: AVX-512F 16 lanes, AVX2+FMA+F16C 8 lanes, NEON 4 lanes, portable 8-lane
//! arrays), and instantiated inside `#[target_feature]` functions; the dispatcher only
//! enters a path that [`Isa::is_supported`] confirmed, else the portable code
//! ([`dispatch::usable`]). `Isa::Scalar` runs the portable code for matmul and attention
//! (checked against [`matmul::matmul_reference`] and [`attention::attention_scalar`]) and
//! the plain scalar code for the small kernels.
//!
//! Measurement helpers for the roofline ([`ceiling`]) and the named benchmark problems of
//! issue #3 ([`workloads`]) live here too, shared by the criterion benches and
//! `specmoe bench kernels`.
//!
//! Layout conventions (all row-major):
//! - activations: f32 `[tokens, features]`;
//! - weights: the Hugging Face layout `[out_features, in_features]` in f32, f16 or bf16,
//!   read in their stored dtype and converted in registers ([`matmul::WeightMatrix`]);
//! - attention queries/outputs: f32 `[n, heads, head_dim]`; KV cache described by
//!   [`attention::KvLayout`].

#![warn(missing_docs)]

pub mod activation;
pub mod attention;
pub mod ceiling;
pub mod dispatch;
pub mod dtype;
pub mod matmul;
pub mod norm;
pub mod parallel;
pub mod rope;
pub mod select;
mod simd;
pub mod workloads;

pub use dispatch::Isa;
pub use dtype::DType;

/// A raw output pointer shared by parallel tasks that write disjoint elements.
///
/// Safety argument (each user restates it): the pointee outlives the parallel region, and
/// the tasks' index sets are pairwise disjoint, so no element is written twice concurrently
/// and nothing reads what another task writes.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);

// SAFETY: see the type's documentation: writes through it are to disjoint elements.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    #[inline]
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
