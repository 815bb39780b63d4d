//! Matmul of f32 activations by stored weights: `out[t, o] = Σ_i x[t, i] · W[o, i]`.
//!
//! Weights keep the Hugging Face layout `[out_features, in_features]` and their stored dtype
//! (f32, f16, bf16); they are converted in registers and read once per call whatever the
//! number of tokens, so a decode-time GEMV streams at DRAM bandwidth and an expert that
//! serves `k+1` verification tokens costs barely more than one that serves a single token.
//! Work is split over output rows with rayon.
//!
//! # Kernel structure
//!
//! - `x` is first copied into a 64-byte aligned buffer, step-major per token block
//!   (`pack_x`): for each block of the tile plan, step after step (one step = the columns
//!   one microkernel iteration covers, the last one zero-padded), the block's tokens side by
//!   side, so a tile addresses all its tokens from one pointer at constant offsets and each
//!   block reads one contiguous range. For bf16 weights each step covers `2L` columns and
//!   is stored *de-interleaved* (the `L` even columns, then the `L` odd ones): a bf16 pair
//!   loaded as one 32-bit lane then becomes two f32 vectors with one shift and one mask
//!   (`w << 16`, `w & 0xFFFF0000`) and the dot product is unchanged.
//!   f16 uses F16C / `vcvtph2ps` (AVX-512, AVX2) or `FCVTL` (NEON).
//! - The microkernel (`kernel.rs`) keeps `R × TB` vector accumulators (R weight rows × TB
//!   tokens) in registers; per step it converts each row's weights once and FMAs them
//!   against the TB tokens' `x` vectors, which stay in registers across the rows (for
//!   TB ≥ 7 the FMAs read them from L1 as memory operands instead). One call
//!   runs a run of row blocks back to back, the ragged column tail (< one step, from a
//!   zero-padded stack copy) as one more step, and ends with transposing horizontal sums
//!   (`Simd::hsums`) written straight to `out`, or partial sums stored for the next
//!   column block. It is compiled as its own target-feature function per (dtype, R, TB).
//! - The tile plan (`rows.rs`) depends on the path and the token count: AVX-512 and NEON
//!   run 1–3 tokens on R = 6, 4 tokens on R = 4 and 5–6 tokens on R = 3, and AVX-512 runs
//!   7–8 tokens on R = 3 × TB = 8 (`x` read from L1), each as a single token block (weights
//!   converted once); larger batches run as blocks of ≤ 3 on R = 6 (on AVX-512 from 16
//!   tokens on, each row block's column block of bf16/f16 weights is first widened to an
//!   f32 copy in L1, in `x`'s packed column order, so that the token blocks do not convert
//!   it again and every FMA is the same); AVX2 and portable: R = 4, TB ≤ 2. The ragged row
//!   tail uses R = 1.
//! - With one token block, a task is one microkernel call over all its row blocks, the
//!   accumulators never leaving registers. With several, all token blocks of a row block
//!   run back to back over its L1-resident weight slice, so weights come from DRAM once
//!   per call. While a row block runs, the next one is prefetched into L2. Large batches
//!   (packed `x` above 256 KiB) switch to row panel → column block → row block → token
//!   block so that `x[tokens, kc]` stays in L2, with the panel's vector partial sums in a
//!   per-thread scratch that stays in L2 too.
//! - Batch invariance: every output has one vector accumulator fed the steps in order and
//!   one fixed horizontal-sum tree, whatever the plan, so `n` tokens give bitwise the
//!   outputs of `n` one-token calls (what keeps greedy speculative decoding exact).
//! - Tasks of [`TASK_ROW_BLOCKS`] row blocks run in parallel with rayon; each writes its own
//!   `out[t, r0..r1]` strip through a raw pointer (disjoint by construction).

mod kernel;
mod rows;

use crate::dispatch::{active, usable, Isa};
use crate::dtype::{load_f32, DType};
use crate::simd::{aligned_f32, lanes, Line};
use crate::SendPtr;
use rayon::prelude::*;
use rows::{matmul_rows, plan, MmArgs, Plan};

/// A read-only weight matrix `[rows, cols]` = `[out_features, in_features]`, row-major,
/// little-endian, in its stored dtype.
#[derive(Clone, Copy, Debug)]
pub struct WeightMatrix<'a> {
    /// Element type of `data`.
    pub dtype: DType,
    /// Output features (rows).
    pub rows: usize,
    /// Input features (columns).
    pub cols: usize,
    /// `rows * cols * dtype.size()` bytes.
    pub data: &'a [u8],
}

impl<'a> WeightMatrix<'a> {
    /// Wraps `data` as a `[rows, cols]` matrix.
    ///
    /// Panics if `data.len() != rows * cols * dtype.size()` (a caller bug: shapes are
    /// validated when checkpoints are loaded).
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> Self {
        assert_eq!(
            data.len(),
            rows * cols * dtype.size(),
            "weight matrix [{rows}, {cols}] {dtype} needs {} bytes",
            rows * cols * dtype.size()
        );
        WeightMatrix {
            dtype,
            rows,
            cols,
            data,
        }
    }

    /// Rows `start..end` as a matrix of their own.
    pub fn row_range(&self, start: usize, end: usize) -> WeightMatrix<'a> {
        let rb = self.cols * self.dtype.size();
        WeightMatrix {
            dtype: self.dtype,
            rows: end - start,
            cols: self.cols,
            data: &self.data[start * rb..end * rb],
        }
    }

    /// Bytes of weight data (what one call of [`matmul`] reads).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Converts row `r` to f32 into `out` (`out.len() == cols`): an embedding lookup.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        crate::dtype::to_f32_slice(self.data, self.dtype, r * self.cols, out);
    }
}

/// Row blocks per parallel task (a task is `TASK_ROW_BLOCKS × R` output rows, `R` the
/// row block of the call's tile plan).
pub const TASK_ROW_BLOCKS: usize = 8;

/// Up to this many weight bytes (all matrices of the call together) a call runs on the calling
/// thread only: an expert's gate and up of the bundled target (2 × 128 KiB), run inside the
/// parallel loop over experts, stay sequential.
const SEQUENTIAL_BYTES: usize = 256 * 1024;

/// `out[tokens, w.rows] = x[tokens, w.cols] · wᵀ` on the active path.
///
/// `x` is f32 `[tokens, w.cols]` row-major; `out` is f32 `[tokens, w.rows]` row-major and is
/// overwritten. Runs in the current rayon pool.
///
/// Panics if `x.len() != tokens * w.cols` or `out.len() != tokens * w.rows`.
pub fn matmul(x: &[f32], tokens: usize, w: &WeightMatrix<'_>, out: &mut [f32]) {
    matmul_with(active(), x, tokens, w, out)
}

/// [`matmul`] on an explicit path. Falls back to the portable path for a path the CPU
/// lacks ([`crate::dispatch::usable`]).
///
/// Panics if `x.len() != tokens * w.cols` or `out.len() != tokens * w.rows`.
pub fn matmul_with(isa: Isa, x: &[f32], tokens: usize, w: &WeightMatrix<'_>, out: &mut [f32]) {
    matmul_many_with(isa, x, tokens, &mut [MatmulJob { w: *w, out }])
}

/// One weight matrix of a [`matmul_many`] call and its output `[tokens, w.rows]`.
pub struct MatmulJob<'w, 'o> {
    /// The weights `[rows, cols]`.
    pub w: WeightMatrix<'w>,
    /// f32 `[tokens, w.rows]` row-major, overwritten.
    pub out: &'o mut [f32],
}

/// Several matmuls of the same activations, `job.out = x · job.wᵀ` for every job, as one
/// parallel loop: `x` is packed once per weight dtype and the row tasks of all matrices are
/// scheduled together (the q/k/v projections, an expert's gate and up), so a step pays one
/// fork instead of one per matrix. Each output is bitwise what [`matmul`] gives.
///
/// Panics if a job's `w.cols * tokens != x.len()` or its `out` is not `[tokens, w.rows]`.
pub fn matmul_many(x: &[f32], tokens: usize, jobs: &mut [MatmulJob<'_, '_>]) {
    matmul_many_with(active(), x, tokens, jobs)
}

/// [`matmul_many`] on an explicit path (the portable path if the CPU lacks it).
///
/// Panics as [`matmul_many`].
pub fn matmul_many_with(isa: Isa, x: &[f32], tokens: usize, jobs: &mut [MatmulJob<'_, '_>]) {
    for j in jobs.iter() {
        let w = &j.w;
        assert_eq!(x.len(), tokens * w.cols, "matmul: x must be [tokens, in]");
        assert_eq!(
            j.out.len(),
            tokens * w.rows,
            "matmul: out must be [tokens, out]"
        );
        assert_eq!(
            w.data.len(),
            w.rows * w.cols * w.dtype.size(),
            "matmul: weight data does not match its shape"
        );
    }
    if tokens == 0 {
        return;
    }
    let isa = usable(isa);
    let l = lanes(isa);

    // One packed copy of `x` per step length present (bf16 steps are de-interleaved; f32
    // and f16 share the plain layout).
    let mut packs: Vec<(bool, Vec<Line>)> = Vec::new();
    // (job, pack, r0, r1, tile plan)
    let mut tasks: Vec<(usize, usize, usize, usize, Plan)> = Vec::new();
    let threads = rayon::current_num_threads();
    let total_bytes: usize = jobs.iter().map(|j| j.w.bytes()).sum();
    let sequential = total_bytes <= SEQUENTIAL_BYTES || !crate::parallel::may_fork();
    for (ji, j) in jobs.iter_mut().enumerate() {
        let w = j.w;
        if w.rows == 0 {
            continue;
        }
        if w.cols == 0 {
            j.out.fill(0.0);
            continue;
        }
        let bf = w.dtype == DType::BF16;
        let step = if bf { 2 * l } else { l };
        let tiles = plan(isa, tokens, w.cols);
        // bf16 under a convert plan runs its f32 copy in steps of `L` (see `pack_x`).
        let split = bf && tiles.convert;
        let pi = match packs.iter().position(|p| p.0 == bf) {
            Some(p) => p,
            None => {
                let mut xp = if packs.is_empty() {
                    PACK.with(|c| c.take())
                } else {
                    Vec::new()
                };
                pack_x(isa, &mut xp, x, tokens, tiles.tb, w.cols, step, bf, split);
                packs.push((bf, xp));
                packs.len() - 1
            }
        };
        if sequential {
            tasks.push((ji, pi, 0, w.rows, tiles));
            continue;
        }
        let rb = tiles.rows;
        let full = TASK_ROW_BLOCKS * rb;
        let task_rows = if w.rows >= full * 4 * threads {
            full
        } else {
            (w.rows.div_ceil(4 * threads).div_ceil(rb) * rb).clamp(rb, full)
        };
        for r0 in (0..w.rows).step_by(task_rows) {
            tasks.push((ji, pi, r0, (r0 + task_rows).min(w.rows), tiles));
        }
    }
    let outs: Vec<SendPtr> = jobs
        .iter_mut()
        .map(|j| SendPtr(j.out.as_mut_ptr()))
        .collect();
    let jobs = &*jobs;
    let run = |&(ji, pi, r0, r1, tiles): &(usize, usize, usize, usize, Plan)| {
        let w = &jobs[ji].w;
        let (bf, xp) = &packs[pi];
        let step = if *bf { 2 * l } else { l };
        let a = MmArgs {
            dt: w.dtype.code(),
            tiles,
            w: w.data.as_ptr(),
            cols: w.cols,
            x: xp.as_ptr() as *const f32,
            x_steps: w.cols.div_ceil(step),
            tokens,
            r0,
            r1,
            n_rows: w.rows,
            out: outs[ji].get(),
        };
        debug_assert_eq!(*bf, w.dtype == DType::BF16);
        // SAFETY: each job's `w.data` holds `rows * cols` elements and its `out`
        // `tokens * rows` (asserted); the pack holds `cols.div_ceil(step) * tokens * step`
        // f32 (`x` step-major per token block, every step padded); this task writes only
        // `out[t * rows + r]` of its own job for `r0 <= r < r1`, disjoint from every other
        // task's; the outputs are borrowed mutably for the whole call.
        unsafe { matmul_rows(isa, &a) }
    };
    if sequential || tasks.len() <= 1 {
        tasks.iter().for_each(run);
    } else {
        tasks.par_iter().for_each(run);
    }
    if let Some((_, xp)) = packs.into_iter().next() {
        PACK.with(|c| c.set(xp));
    }
}

thread_local! {
    /// The calling thread's packed-activation buffer, reused across calls (taken out while
    /// in use, so a nested call on the same thread simply allocates its own).
    static PACK: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Copies `x[tokens, cols]` into `buf` step-major per token block, on `isa`'s path.
///
/// The tokens are split into the balanced blocks of at most `tb` of the tile plan
/// ([`rows::token_blocks`]); block `b` (first token `t0`, `n` tokens) takes the
/// `n · steps · step` f32 from `t0 · steps · step` on, and within it step `s` (columns
/// `s·step .. (s+1)·step`, the last one zero-padded) of its token `i` lies at
/// `(s·n + i) · step`. So the tokens of a microkernel tile share one pointer per step and
/// each token block reads one contiguous range (a stride of all tokens between steps put a
/// 64-token block's every step in the same L1 sets). With `deinterleave` (bf16), each step
/// is stored as its even columns, then its odd ones; with `split` too (bf16 under a plan
/// that runs an f32 copy of the weights in steps of `L`), the halves are stored as two
/// steps of `L` (half `h` of step `s` as step `2s + h`), so that copy's tile reads them with
/// a stride of `n · L`.
#[allow(clippy::too_many_arguments)]
fn pack_x(
    isa: Isa,
    buf: &mut Vec<Line>,
    x: &[f32],
    tokens: usize,
    tb: usize,
    cols: usize,
    step: usize,
    deinterleave: bool,
    split: bool,
) {
    assert!(x.len() >= tokens * cols && step > 0 && tb > 0);
    let base = aligned_f32(buf, cols.div_ceil(step) * tokens * step);
    // SAFETY: `aligned_f32` made `buf` hold `cols.div_ceil(step) * tokens * step` f32 and
    // `x` holds `tokens * cols` (asserted).
    unsafe {
        pack_run(
            isa,
            x.as_ptr(),
            tokens,
            tb,
            cols,
            step,
            deinterleave,
            split,
            base,
        )
    }
}

/// The body of [`pack_x`], compiled per path: bf16 steps are de-interleaved with the
/// path's shuffles ([`crate::simd::Simd::deinterleave`]; the plain loop built for the
/// baseline target ran mostly scalar, ≈ 2 µs for 7 × 512 columns, half a router call).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_generic<S: crate::simd::Simd>(
    x: *const f32,
    tokens: usize,
    tb: usize,
    cols: usize,
    step: usize,
    deinterleave: bool,
    split: bool,
    p: *mut f32,
) {
    let half = step / 2;
    // Where half `h` (0 with `!split`) of step `s` of the block's token `i` starts.
    let at = |s: usize, h: usize, i: usize, n: usize| {
        if split {
            ((2 * s + h) * n + i) * half
        } else {
            (s * n + i) * step
        }
    };
    // A bf16 step is `2L` columns of the same path (`lanes(isa)`, as the dispatch chose `S`).
    assert!(!deinterleave || half == S::L, "pack: step of another path");
    let full = cols / step;
    let steps = cols.div_ceil(step);
    for (t0, n) in rows::token_blocks(tokens, tb) {
        let pb = p.add(t0 * steps * step);
        for i in 0..n {
            let src = x.add((t0 + i) * cols);
            for s in 0..full {
                let d = pb.add(at(s, 0, i, n));
                if deinterleave {
                    let o = if split {
                        pb.add(at(s, 1, i, n))
                    } else {
                        d.add(half)
                    };
                    S::deinterleave(src.add(s * step), d, o);
                } else {
                    std::ptr::copy_nonoverlapping(src.add(s * step), d, step);
                }
            }
            let rest = cols - full * step;
            if rest > 0 {
                let mut d = [0.0f32; 64];
                for (j, &v) in std::slice::from_raw_parts(src.add(full * step), rest)
                    .iter()
                    .enumerate()
                {
                    d[if deinterleave {
                        (j % 2) * half + j / 2
                    } else {
                        j
                    }] = v;
                }
                if split {
                    std::ptr::copy_nonoverlapping(d.as_ptr(), pb.add(at(full, 0, i, n)), half);
                    std::ptr::copy_nonoverlapping(
                        d[half..].as_ptr(),
                        pb.add(at(full, 1, i, n)),
                        half,
                    );
                } else {
                    std::ptr::copy_nonoverlapping(d.as_ptr(), pb.add(at(full, 0, i, n)), step);
                }
            }
        }
    }
}

crate::simd::isa_entry!(fn pack_run => pack_generic(
    x: *const f32,
    tokens: usize,
    tb: usize,
    cols: usize,
    step: usize,
    deinterleave: bool,
    split: bool,
    p: *mut f32,
));

/// Plain scalar reference used by conformance tests: f64 accumulation, no tiling.
///
/// Returns f32 `[tokens, w.rows]`. Panics if `x.len() != tokens * w.cols`.
pub fn matmul_reference(x: &[f32], tokens: usize, w: &WeightMatrix<'_>) -> Vec<f32> {
    assert_eq!(x.len(), tokens * w.cols, "matmul: x must be [tokens, in]");
    let mut out = vec![0.0f32; tokens * w.rows];
    for t in 0..tokens {
        for r in 0..w.rows {
            let mut acc = 0.0f64;
            for i in 0..w.cols {
                acc += x[t * w.cols + i] as f64 * load_f32(w.data, w.dtype, r * w.cols + i) as f64;
            }
            out[t * w.rows + r] = acc as f32;
        }
    }
    out
}
