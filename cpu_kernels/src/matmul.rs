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
//! - `x` is first copied into a 64-byte aligned buffer `[tokens, kp]` (`kp` = `cols`
//!   rounded up to one microkernel step, zero-filled, plus one cache line so that token
//!   rows do not share an L1 set). For bf16 weights each step covers `2L` columns and `x`
//!   is stored *de-interleaved* inside each step (the `L` even columns, then the `L` odd
//!   ones): a bf16 pair loaded as one 32-bit lane then becomes two f32 vectors with one
//!   shift and one mask (`w << 16`, `w & 0xFFFF0000`) and the dot product is unchanged.
//!   f16 uses F16C / `vcvtph2ps` (AVX-512, AVX2) or `FCVTL` (NEON).
//! - The microkernel keeps `R × TB` vector accumulators (R weight rows × TB tokens) in
//!   registers; per step it converts each row's weights once and FMAs them against the TB
//!   tokens' `x` vectors, which stay in registers across the rows. AVX-512 and NEON:
//!   R = 6, TB ≤ 3; AVX2 and portable: R = 4, TB ≤ 2. It is compiled as its own
//!   target-feature function per (dtype, R, TB) so that nothing else competes for
//!   registers; the horizontal sums happen once per output.
//! - Tokens are split into balanced blocks of ≤ TB; all token blocks of a row block run
//!   back to back over its L1-resident weight slice, so weights come from DRAM once per
//!   call. While a row block runs, the next one is prefetched into L2. Large batches
//!   (packed `x` above 256 KiB) switch to column block → row block → token block so that
//!   `x[tokens, kc]` stays in L2, with vector partial sums in a per-thread scratch.
//! - The ragged column tail (< one step) is copied into a zero-padded stack buffer and runs
//!   as one more step; the ragged row tail uses R = 1.
//! - Tasks of [`TASK_ROW_BLOCKS`] row blocks run in parallel with rayon; each writes its own
//!   `out[t, r0..r1]` strip through a raw pointer (disjoint by construction).

use crate::dispatch::{active, usable, Isa};
use crate::dtype::{load_f32, DType};
use crate::simd::{aligned_f32, isa_entry, lanes, Line, Simd};
use crate::SendPtr;
use rayon::prelude::*;

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

/// Row blocks per parallel task (a task is `TASK_ROW_BLOCKS × R` output rows).
pub const TASK_ROW_BLOCKS: usize = 8;

/// Rows per microkernel row block on `isa`'s path (see [`MatmulTiles`]).
fn row_block(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 | Isa::Neon => 6,
        _ => 4,
    }
}

/// Below this many weight bytes a call runs on the calling thread only.
const SEQUENTIAL_BYTES: usize = 256 * 1024;

thread_local! {
    /// Per-thread partial sums of the K-blocked order (reused across calls).
    static SCRATCH: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
}

const DT_F32: u8 = 0;
const DT_F16: u8 = 1;
const DT_BF16: u8 = 2;

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
    assert_eq!(x.len(), tokens * w.cols, "matmul: x must be [tokens, in]");
    assert_eq!(
        out.len(),
        tokens * w.rows,
        "matmul: out must be [tokens, out]"
    );
    assert_eq!(
        w.data.len(),
        w.rows * w.cols * w.dtype.size(),
        "matmul: weight data does not match its shape"
    );
    if tokens == 0 || w.rows == 0 {
        return;
    }
    if w.cols == 0 {
        out.fill(0.0);
        return;
    }
    let isa = usable(isa);
    let l = lanes(isa);
    let step = if w.dtype == DType::BF16 { 2 * l } else { l };
    // Packed rows are `kp` f32 apart: `cols` rounded up to a step, plus one cache line so
    // that the token rows of a tile do not all map to the same L1 set.
    let kp = w.cols.div_ceil(step) * step + 16;
    let mut xp = PACK.with(|c| c.take());
    pack_x(&mut xp, x, tokens, w.cols, kp, step, w.dtype == DType::BF16);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let dt = match w.dtype {
        DType::F32 => DT_F32,
        DType::F16 => DT_F16,
        DType::BF16 => DT_BF16,
    };
    let run = |r0: usize, r1: usize| {
        let a = MmArgs {
            dt,
            w: w.data.as_ptr(),
            cols: w.cols,
            x: xp.as_ptr() as *const f32,
            kp,
            tokens,
            r0,
            r1,
            n_rows: w.rows,
            out: out_ptr.get(),
        };
        // SAFETY: `w.data` holds `rows * cols` elements (asserted), `xp` holds
        // `tokens * kp` f32, and this task writes only `out[t * rows + r]` for
        // `r0 <= r < r1`, disjoint from every other task's rows; `out` has
        // `tokens * rows` elements (asserted) and outlives the parallel loop.
        unsafe { matmul_rows(isa, &a) }
    };
    let threads = rayon::current_num_threads();
    if w.bytes() < SEQUENTIAL_BYTES || threads == 1 {
        run(0, w.rows);
        PACK.with(|c| c.set(xp));
        return;
    }
    let rb = row_block(isa);
    let full = TASK_ROW_BLOCKS * rb;
    let task_rows = if w.rows >= full * 4 * threads {
        full
    } else {
        (w.rows.div_ceil(4 * threads).div_ceil(rb) * rb).clamp(rb, full)
    };
    let n_tasks = w.rows.div_ceil(task_rows);
    (0..n_tasks).into_par_iter().for_each(|b| {
        let r0 = b * task_rows;
        run(r0, (r0 + task_rows).min(w.rows));
    });
    PACK.with(|c| c.set(xp));
}

thread_local! {
    /// The calling thread's packed-activation buffer, reused across calls (taken out while
    /// in use, so a nested call on the same thread simply allocates its own).
    static PACK: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Copies `x[tokens, cols]` into `buf` as `[tokens, kp]` f32 (64-byte aligned, zero-padded
/// to `kp`, a multiple of 16 that covers `cols` rounded up to `step`); with `deinterleave`, each step of `step` columns is
/// stored as its even columns then its odd ones.
fn pack_x(
    buf: &mut Vec<Line>,
    x: &[f32],
    tokens: usize,
    cols: usize,
    kp: usize,
    step: usize,
    deinterleave: bool,
) {
    let base = aligned_f32(buf, tokens * kp);
    // SAFETY: `aligned_f32` made `buf` hold at least `tokens * kp` f32 (plain data).
    let p = unsafe { std::slice::from_raw_parts_mut(base, tokens * kp) };
    let half = step / 2;
    for t in 0..tokens {
        let src = &x[t * cols..(t + 1) * cols];
        let dst = &mut p[t * kp..(t + 1) * kp];
        if !deinterleave {
            dst[..cols].copy_from_slice(src);
            dst[cols..].fill(0.0);
            continue;
        }
        let full = cols / step;
        for (c, d) in src.chunks_exact(step).zip(dst.chunks_exact_mut(step)) {
            let (even, odd) = d.split_at_mut(half);
            for j in 0..half {
                even[j] = c[2 * j];
                odd[j] = c[2 * j + 1];
            }
        }
        let d = &mut dst[full * step..];
        d.fill(0.0);
        for (j, &v) in src[full * step..].iter().enumerate() {
            d[(j % 2) * half + j / 2] = v;
        }
    }
}

/// Arguments of one row-range task (raw pointers: see the safety note in [`matmul_with`]).
pub(crate) struct MmArgs {
    dt: u8,
    w: *const u8,
    cols: usize,
    x: *const f32,
    kp: usize,
    tokens: usize,
    r0: usize,
    r1: usize,
    n_rows: usize,
    out: *mut f32,
}

isa_entry!(fn matmul_rows => rows_generic(a: &MmArgs));

/// Per-path tile sizes of the matmul microkernel.
pub(crate) trait MatmulTiles: Simd {
    /// Runs [`rows_cfg`] with this path's `R` and `TB`.
    unsafe fn rows<const DT: u8>(a: &MmArgs);
    /// [`microkernel`] with its accumulators read from (if `k.load`) and written to
    /// `k.acc[(r * TB + t) * 16..][..L]`, compiled as its own function with the path's
    /// target features so that register allocation sees nothing but the loop.
    unsafe fn mk<const DT: u8, const R: usize, const TB: usize>(k: &Mk);
}

/// Arguments of one microkernel call.
pub(crate) struct Mk {
    /// First weight byte of row 0 at the first step.
    w: *const u8,
    /// Bytes between weight rows.
    wrs: usize,
    /// First packed `x` element of token 0 at the first step.
    x: *const f32,
    /// f32 between packed token rows.
    xs: usize,
    /// Steps to run.
    steps: usize,
    /// Accumulator slots `[R · TB][16]`.
    acc: *mut f32,
    /// Start from the slots (else from zero).
    load: bool,
    /// If non-null, the weights to prefetch into L2 alongside (same geometry as `w`): the
    /// next row block, so that its DRAM reads overlap this block's arithmetic.
    pf: *const u8,
}

macro_rules! matmul_tiles {
    ($ty:ty, $feat:literal, $r:literal, $tb:literal) => {
        impl MatmulTiles for $ty {
            #[inline(always)]
            unsafe fn rows<const DT: u8>(a: &MmArgs) {
                rows_cfg::<Self, DT, $r, $tb>(a)
            }
            #[target_feature(enable = $feat)]
            #[inline(never)]
            unsafe fn mk<const DT: u8, const R: usize, const TB: usize>(k: &Mk) {
                mk_mem::<Self, DT, R, TB>(k)
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
matmul_tiles!(crate::simd::x86::Avx512, "avx512f,avx2,fma,f16c", 6, 3);
#[cfg(target_arch = "x86_64")]
matmul_tiles!(crate::simd::x86::Avx2, "avx2,fma,f16c", 4, 2);
#[cfg(target_arch = "aarch64")]
matmul_tiles!(crate::simd::neon::Neon, "neon", 6, 3);

impl MatmulTiles for crate::simd::portable::Portable {
    #[inline(always)]
    unsafe fn rows<const DT: u8>(a: &MmArgs) {
        rows_cfg::<Self, DT, 4, 2>(a)
    }
    #[inline(never)]
    unsafe fn mk<const DT: u8, const R: usize, const TB: usize>(k: &Mk) {
        mk_mem::<Self, DT, R, TB>(k)
    }
}

#[inline(always)]
unsafe fn rows_generic<S: MatmulTiles>(a: &MmArgs) {
    match a.dt {
        DT_BF16 => S::rows::<DT_BF16>(a),
        DT_F16 => S::rows::<DT_F16>(a),
        _ => S::rows::<DT_F32>(a),
    }
}

#[inline(always)]
const fn elem_size(dt: u8) -> usize {
    if dt == DT_F32 {
        4
    } else {
        2
    }
}

/// Bytes of one row block's weights kept L1-resident by the K blocking.
const W_BLOCK_BYTES: usize = 12 * 1024;

/// Bytes of packed activations `x[tokens, kc]` kept L2-resident by the K blocking.
const X_BLOCK_BYTES: usize = 256 * 1024;

/// Rows `a.r0..a.r1`, all tokens, in row blocks of `R` (the ragged end: blocks of 1) and
/// balanced token blocks of ≤ `TBMAX`.
///
/// A row block's `[R, kc]` weight slice stays in L1 while every token block runs over it
/// (each weight vector converted once per token block, reused `TB` times from registers);
/// `x[t, kc]` is streamed from L2 (each vector reused `R` times from registers). Weights
/// are read from DRAM once per call; while its first token block runs, a row block
/// prefetches the next row block's slice into L2 (one prefetch per row per 64 bytes) so
/// that DRAM reads overlap the arithmetic. Vector partial sums wait in a per-thread
/// scratch between column blocks. Two loop orders:
/// - the packed `x` fits in L2 (decode, verification, small batches): row block →
///   column block → token block, so each weight row is read sequentially (`R` streams);
///   with one token block, no column blocking at all (accumulators stay in registers);
/// - otherwise (large batches, prefill): column block → row block → token block, so that
///   `x[tokens, kc]` stays in L2 while all the task's row blocks run over it.
#[inline(always)]
unsafe fn rows_cfg<S: MatmulTiles, const DT: u8, const R: usize, const TBMAX: usize>(a: &MmArgs) {
    let esz = elem_size(DT);
    let step = if DT == DT_BF16 { 2 * S::L } else { S::L };
    let steps = a.cols / step;
    let nb = a.tokens.div_ceil(TBMAX);
    let kc_steps = if nb == 1 {
        steps.max(1)
    } else {
        let w_steps = W_BLOCK_BYTES / (R * step * esz);
        let x_steps = X_BLOCK_BYTES / (a.tokens * step * 4);
        w_steps.min(x_steps).max(1)
    };
    let x_in_l2 = a.tokens * a.kp * 4 <= X_BLOCK_BYTES;
    let blocked = kc_steps < steps;
    // The scratch pointer stays valid for this task: nothing else on this thread touches
    // the buffer until the task ends (no closure around the loops, so that everything
    // below is compiled with the path's target features).
    let scratch_rows = if x_in_l2 { R } else { a.r1 - a.r0 };
    let sp = if blocked {
        let need = scratch_rows * a.tokens * 16;
        SCRATCH.with(|cell| {
            let mut buf = cell.take();
            let p = aligned_f32(&mut buf, need);
            cell.set(buf);
            p
        })
    } else {
        std::ptr::null_mut()
    };
    let geo = RowsGeo {
        step,
        steps,
        kc_steps,
        blocked,
        nb,
        sp,
    };
    if x_in_l2 {
        let mut r = a.r0;
        while r < a.r1 {
            let rr = if r + R <= a.r1 { R } else { 1 };
            let mut k0 = 0;
            loop {
                k0 = column_block::<S, DT, R, TBMAX>(a, &geo, r, rr, k0, 0);
                if k0 == steps {
                    break;
                }
            }
            r += rr;
        }
    } else {
        let mut k0 = 0;
        loop {
            let mut r = a.r0;
            let mut next = k0;
            while r < a.r1 {
                let rr = if r + R <= a.r1 { R } else { 1 };
                next = column_block::<S, DT, R, TBMAX>(a, &geo, r, rr, k0, r - a.r0);
                r += rr;
            }
            k0 = next;
            if k0 == steps {
                break;
            }
        }
    }
}

/// Loop constants of [`rows_cfg`].
struct RowsGeo {
    step: usize,
    steps: usize,
    kc_steps: usize,
    blocked: bool,
    nb: usize,
    sp: *mut f32,
}

/// All token blocks of row block `r` (`rr` rows) over the column block starting at step
/// `k0`, with partial sums at scratch row `srow`. Returns the next column block's step.
#[inline(always)]
unsafe fn column_block<S: MatmulTiles, const DT: u8, const R: usize, const TBMAX: usize>(
    a: &MmArgs,
    geo: &RowsGeo,
    r: usize,
    rr: usize,
    k0: usize,
    srow: usize,
) -> usize {
    let esz = elem_size(DT);
    let step = geo.step;
    let wrs = a.cols * esz;
    let ks = geo.kc_steps.min(geo.steps - k0);
    let last = k0 + ks == geo.steps;
    let base = a.tokens / geo.nb;
    let extra = a.tokens % geo.nb;
    let mut t0 = 0;
    for b in 0..geo.nb {
        let tb = base + usize::from(b < extra);
        let g = Tile {
            w: a.w.add(r * wrs + k0 * step * esz),
            wrs,
            x: a.x.add(t0 * a.kp + k0 * step),
            xs: a.kp,
            steps: ks,
            tail: if last { a.cols % step } else { 0 },
            out: a.out.add(t0 * a.n_rows + r),
            ldo: a.n_rows,
            acc: if geo.blocked {
                geo.sp.add((srow * a.tokens + t0 * rr) * 16)
            } else {
                std::ptr::null_mut()
            },
            load_acc: k0 > 0,
            finish: last,
            // The first token block prefetches the next row block's slice.
            pf: if b == 0 && r + rr < a.n_rows {
                a.w.add((r + rr) * wrs + k0 * step * esz)
            } else {
                std::ptr::null()
            },
        };
        if rr == R {
            token_block::<S, DT, R>(tb, &g);
        } else {
            token_block::<S, DT, 1>(tb, &g);
        }
        t0 += tb;
    }
    k0 + ks
}

/// One (row block, token block, column block) tile.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    /// First weight byte of the block's first row.
    w: *const u8,
    /// Bytes between weight rows.
    wrs: usize,
    /// First packed `x` element of the block's first token.
    x: *const f32,
    /// f32 between packed token rows.
    xs: usize,
    /// Full microkernel steps.
    steps: usize,
    /// Ragged columns after the steps (only on the last column block).
    tail: usize,
    /// `out[t0, r]`.
    out: *mut f32,
    /// f32 between output token rows.
    ldo: usize,
    /// Partial-sum slots `[R * TB][16]` (null when unused).
    acc: *mut f32,
    /// Start from the partial sums instead of zero.
    load_acc: bool,
    /// Reduce into `out` (else store the partial sums).
    finish: bool,
    /// Weights to prefetch into L2 during the tile (null: none); see [`Mk::pf`].
    pf: *const u8,
}

#[inline(always)]
unsafe fn token_block<S: MatmulTiles, const DT: u8, const R: usize>(tb: usize, g: &Tile) {
    match tb {
        1 => tile::<S, DT, R, 1>(g),
        2 => tile::<S, DT, R, 2>(g),
        3 => tile::<S, DT, R, 3>(g),
        _ => unreachable!("token block larger than the tile"),
    }
}

/// Loads (if `k.load`) the accumulators from `k.acc`, runs [`microkernel`] (prefetching
/// `k.pf` if given), stores them back.
#[inline(always)]
unsafe fn mk_mem<S: Simd, const DT: u8, const R: usize, const TB: usize>(k: &Mk) {
    let acc = k.acc;
    let mut a = [[S::zero(); TB]; R];
    if k.load {
        for (r, row) in a.iter_mut().enumerate() {
            for (t, v) in row.iter_mut().enumerate() {
                *v = S::load(acc.add((r * TB + t) * 16));
            }
        }
    }
    a = if k.pf.is_null() {
        microkernel::<S, DT, R, TB, false>(k.w, k.wrs, k.x, k.xs, k.steps, a, k.pf)
    } else {
        microkernel::<S, DT, R, TB, true>(k.w, k.wrs, k.x, k.xs, k.steps, a, k.pf)
    };
    for (r, row) in a.iter().enumerate() {
        for (t, v) in row.iter().enumerate() {
            S::store(acc.add((r * TB + t) * 16), *v);
        }
    }
}

/// One tile: the microkernel over the block's steps, the ragged tail (from a zero-padded
/// copy of the rows' last bytes), then either the partial sums go back to the scratch or
/// the lanes are summed into `out`.
#[inline(always)]
unsafe fn tile<S: MatmulTiles, const DT: u8, const R: usize, const TB: usize>(g: &Tile) {
    let mut local = std::mem::MaybeUninit::<[[[f32; 16]; TB]; R]>::uninit();
    let acc = if g.acc.is_null() {
        local.as_mut_ptr() as *mut f32
    } else {
        g.acc
    };
    let k = Mk {
        w: g.w,
        wrs: g.wrs,
        x: g.x,
        xs: g.xs,
        steps: g.steps,
        acc,
        load: g.load_acc,
        pf: g.pf,
    };
    S::mk::<DT, R, TB>(&k);
    if g.tail > 0 {
        let esz = elem_size(DT);
        let step = if DT == DT_BF16 { 2 * S::L } else { S::L };
        let mut buf = [[0u8; 64]; R];
        for (r, b) in buf.iter_mut().enumerate() {
            std::ptr::copy_nonoverlapping(
                g.w.add(r * g.wrs + g.steps * step * esz),
                b.as_mut_ptr(),
                g.tail * esz,
            );
        }
        let k = Mk {
            w: buf.as_ptr() as *const u8,
            wrs: 64,
            x: g.x.add(g.steps * step),
            xs: g.xs,
            steps: 1,
            acc,
            load: true,
            pf: std::ptr::null(),
        };
        S::mk::<DT, R, TB>(&k);
    }
    if g.finish {
        for r in 0..R {
            for t in 0..TB {
                *g.out.add(t * g.ldo + r) = S::hsum(S::load(acc.add((r * TB + t) * 16)));
            }
        }
    }
}

/// `acc[r][t] += Σ_k w[r, k] · x[t, k]` over `steps` steps, vector-wise (reduced later).
/// `w` rows are `wrs` bytes apart, `x` token rows `xs` f32 apart (packed by [`pack_x`]).
///
/// Per step each row's weights are converted once and FMA'd against the `TB` tokens'
/// `x` vectors, which the compiler keeps in registers across the `R` rows.
#[inline(always)]
unsafe fn microkernel<S: Simd, const DT: u8, const R: usize, const TB: usize, const PF: bool>(
    w: *const u8,
    wrs: usize,
    x: *const f32,
    xs: usize,
    steps: usize,
    mut acc: [[S::V; TB]; R],
    pf: *const u8,
) -> [[S::V; TB]; R] {
    let esz = elem_size(DT);
    let step = if DT == DT_BF16 { 2 * S::L } else { S::L };
    // One prefetch per row per 64 bytes of weights.
    let pf_every = (64 / (step * esz)).max(1);
    for s in 0..steps {
        let k = s * step;
        if PF && s % pf_every == 0 {
            for r in 0..R {
                S::prefetch_l2(pf.wrapping_add(r * wrs + k * esz));
            }
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let wp = w.add(r * wrs + k * esz);
            if DT == DT_BF16 {
                let (we, wo) = S::bf16x2(wp);
                for (t, a) in acc_r.iter_mut().enumerate() {
                    let xp = x.add(t * xs + k);
                    *a = S::fma(we, S::load(xp), *a);
                    *a = S::fma(wo, S::load(xp.add(S::L)), *a);
                }
            } else {
                let wv = if DT == DT_F16 {
                    S::f16(wp)
                } else {
                    S::load(wp as *const f32)
                };
                for (t, a) in acc_r.iter_mut().enumerate() {
                    *a = S::fma(wv, S::load(x.add(t * xs + k)), *a);
                }
            }
        }
    }
    acc
}

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
