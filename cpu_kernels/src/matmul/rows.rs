//! The per-task driver: tile plans per path and token count, and the loops over row
//! blocks, column blocks and token blocks that call the microkernel ([`super::kernel`]).

use super::kernel::{Mk, MK_PF, MK_REDUCE};
use crate::dispatch::Isa;
use crate::simd::{aligned_f32, isa_entry, Line, Simd};

pub(super) use crate::dtype::{elem_size, DT_BF16, DT_F16, DT_F32};

/// Columns (= packed `x` f32 per token) of one microkernel step of dtype code `dt` on path
/// `S`: `2L` for bf16, `L` otherwise.
#[inline(always)]
pub(super) const fn step_len<S: Simd>(dt: u8) -> usize {
    if dt == DT_BF16 {
        2 * S::L
    } else {
        S::L
    }
}

/// Tile shape of one call: `rows` weight rows × up to `tb` tokens per microkernel tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// Rows per row block (`R`).
    pub(super) rows: usize,
    /// Largest token block (`TB`); tokens are split into balanced blocks of at most `tb`.
    pub(super) tb: usize,
    /// bf16 / f16 weights: convert each row block's column block to f32 once (into a
    /// per-thread L1 scratch) and run every token block on the f32 copy.
    pub(super) convert: bool,
}

/// Row length from which AVX-512 runs more than 8 tokens as 8-token blocks (see [`plan`]).
pub(super) const WIDE_COLS: usize = 2048;

const fn p(rows: usize, tb: usize) -> Plan {
    Plan {
        rows,
        tb,
        convert: false,
    }
}

/// Token count from which AVX-512 widens 16-bit weights to f32 once per row block and
/// column block, and runs the 3-token blocks on the f32 copy (see [`plan`]).
pub(super) const CONVERT_TOKENS: usize = 16;

/// The tile plan of `isa`'s path for `tokens` tokens.
///
/// 32-register paths (AVX-512, NEON) hold `R·TB` accumulators, `2·TB` activation vectors
/// and a row's converted weights: 1–3 tokens run as one token block on R = 6 rows, 4 as
/// one block on R = 4, 5–6 as one block on R = 3 (each weight vector converted once).
/// On AVX-512, 7–8 tokens run as one block on R = 3 × TB = 8 whose FMAs read `x` straight
/// from L1 ([`crate::simd::Simd::fma_mem_at`]): 24 accumulators and one row's converted
/// weights are all it keeps live, so it does not spill (holding `x` too did). From 9 tokens
/// on (from 7 on NEON), blocks of ≤ 3 on R = 6 with `x` in registers: with several token
/// blocks `x` is streamed from L2 once per row block, and R = 6 halves that traffic
/// (measured: R = 3 × TB = 8 blocks were 10–20 % slower on matrices up to 4096 × 512 and
/// faster only on large ones). 16-register paths (AVX2) and the portable one use R = 4 ×
/// TB ≤ 2.
///
/// Long rows (`cols` ≥ [`WIDE_COLS`], e.g. Mixtral's 4096) with `x` still L2-resident
/// (≤ 256 KiB packed) are the exception: there the weights stream from DRAM and converting
/// each weight vector once per 8 tokens instead of per 3 pays, so those calls run as blocks
/// of ≤ 8 on R = 3 too (measured on 14336 × 4096: 16 tokens −10 %; with 64 tokens, whose `x`
/// leaves L2, they were 3–4 % slower and keep the 3-token blocks).
///
/// From [`CONVERT_TOKENS`] tokens on (outside that exception), AVX-512 widens bf16/f16
/// weights to f32 once per row block and column block, into an L1-sized per-thread copy,
/// and runs the 6 × 3 blocks on it: the 3-token tile otherwise converts every weight vector
/// again for each token block (two port-0/5 uops per 32 weights, a third of its FMA count).
/// Measured with separate runs alternated: 14336 × 4096 × 64 tokens 41–42 % → 48–49 % of the
/// FMA peak on one and two threads; 4096 × 512 × 64 −12 to −16 %, 512 × 512 × 64 −13 to −23 %;
/// 16 tokens −2 to −13 %; 9 tokens within noise (so the threshold is 16).
///
/// The plan never changes results: each output has one vector accumulator fed the steps
/// in order and one horizontal sum, whatever the tile.
pub(super) fn plan(isa: Isa, tokens: usize, cols: usize) -> Plan {
    match isa {
        Isa::Avx512 => match tokens {
            1 => p(6, 1),
            2 => p(6, 2),
            3 => p(6, 3),
            4 => p(4, 4),
            5 | 6 => p(3, 6),
            7 | 8 => p(3, 8),
            _ if cols >= WIDE_COLS && tokens * cols * 4 <= X_BLOCK_BYTES => p(3, 8),
            _ if tokens >= CONVERT_TOKENS => Plan {
                rows: 6,
                tb: 3,
                convert: true,
            },
            _ => p(6, 3),
        },
        Isa::Neon => match tokens {
            1 => p(6, 1),
            2 => p(6, 2),
            3 => p(6, 3),
            4 => p(4, 4),
            5 | 6 => p(3, 6),
            _ => p(6, 3),
        },
        _ => p(4, 2),
    }
}

/// The balanced token blocks of at most `tb` tokens that a plan of largest block `tb` splits
/// `tokens` into, as (first token, tokens): the first `tokens % nb` blocks take one more.
pub(super) fn token_blocks(tokens: usize, tb: usize) -> impl Iterator<Item = (usize, usize)> {
    let nb = tokens.div_ceil(tb).max(1);
    let (base, extra) = (tokens / nb, tokens % nb);
    (0..nb).map(move |b| (b * base + b.min(extra), base + usize::from(b < extra)))
}

/// Arguments of one row-range task (raw pointers: see the safety note in
/// [`super::matmul_with`]).
pub(crate) struct MmArgs {
    pub(super) dt: u8,
    pub(super) tiles: Plan,
    pub(super) w: *const u8,
    pub(super) cols: usize,
    pub(super) x: *const f32,
    /// Steps of the packed `x` per token (`cols` rounded up to a step; see
    /// [`super::pack_x`]).
    pub(super) x_steps: usize,
    pub(super) tokens: usize,
    pub(super) r0: usize,
    pub(super) r1: usize,
    pub(super) n_rows: usize,
    pub(super) out: *mut f32,
}

isa_entry!(pub(super) fn matmul_rows => rows_generic(a: &MmArgs));

/// Per-path instantiation of the tile plans and of the microkernel.
pub(crate) trait MatmulTiles: Simd {
    /// Runs [`rows_cfg`] with the `R` and `TB` of `a.tiles` (one of this path's plans).
    unsafe fn rows<const DT: u8>(a: &MmArgs);
    /// [`super::kernel::mk_body`], compiled as its own function with the path's target
    /// features so that register allocation sees nothing but its loops.
    unsafe fn mk<const DT: u8, const R: usize, const TB: usize>(k: &Mk);
}

macro_rules! mk_fn {
    ($($feat:literal)?) => {
        $(#[target_feature(enable = $feat)])?
        #[inline(never)]
        unsafe fn mk<const DT: u8, const R: usize, const TB: usize>(k: &Mk) {
            super::kernel::mk_body::<Self, DT, R, TB>(k)
        }
    };
}

/// The plans of the 32-register paths (see [`plan`]).
#[inline(always)]
unsafe fn rows_wide<S: MatmulTiles, const DT: u8>(a: &MmArgs) {
    match (a.tiles.rows, a.tiles.tb) {
        (6, 1) => rows_cfg::<S, DT, 6, 1>(a),
        (6, 2) => rows_cfg::<S, DT, 6, 2>(a),
        (6, 3) => rows_cfg::<S, DT, 6, 3>(a),
        (4, 4) => rows_cfg::<S, DT, 4, 4>(a),
        (3, 6) => rows_cfg::<S, DT, 3, 6>(a),
        (3, 8) => rows_cfg::<S, DT, 3, 8>(a),
        _ => unreachable!("no such matmul tile plan"),
    }
}

#[cfg(target_arch = "x86_64")]
impl MatmulTiles for crate::simd::x86::Avx512 {
    #[inline(always)]
    unsafe fn rows<const DT: u8>(a: &MmArgs) {
        rows_wide::<Self, DT>(a)
    }
    mk_fn!("avx512f,avx2,fma,f16c");
}

#[cfg(target_arch = "aarch64")]
impl MatmulTiles for crate::simd::neon::Neon {
    #[inline(always)]
    unsafe fn rows<const DT: u8>(a: &MmArgs) {
        rows_wide::<Self, DT>(a)
    }
    mk_fn!("neon");
}

#[cfg(target_arch = "x86_64")]
impl MatmulTiles for crate::simd::x86::Avx2 {
    #[inline(always)]
    unsafe fn rows<const DT: u8>(a: &MmArgs) {
        rows_cfg::<Self, DT, 4, 2>(a)
    }
    mk_fn!("avx2,fma,f16c");
}

impl MatmulTiles for crate::simd::portable::Portable {
    #[inline(always)]
    unsafe fn rows<const DT: u8>(a: &MmArgs) {
        rows_cfg::<Self, DT, 4, 2>(a)
    }
    mk_fn!();
}

#[inline(always)]
unsafe fn rows_generic<S: MatmulTiles>(a: &MmArgs) {
    match a.dt {
        DT_BF16 => S::rows::<DT_BF16>(a),
        DT_F16 => S::rows::<DT_F16>(a),
        _ => S::rows::<DT_F32>(a),
    }
}

thread_local! {
    /// Per-thread partial sums of the K-blocked orders (reused across calls).
    static SCRATCH: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
    /// Per-thread f32 copy of one row block's column block (plans with `convert`).
    static CONVERTED: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Bytes of one row block's weights kept L1-resident by the K blocking.
const W_BLOCK_BYTES: usize = 12 * 1024;

/// Bytes of vector partial sums of one row panel (the column-block-outer order): they
/// stay in L2 while the panel's row blocks run over each column block.
const PANEL_SCRATCH_BYTES: usize = 128 * 1024;

/// Shortest weight row (bytes) whose row blocks prefetch their successor into L2. On
/// shorter rows the hardware prefetcher keeps up and the prefetch instructions only cost
/// issue slots: measured on one thread, interleaved in one process, with 128-column bf16
/// matrices (256-byte rows) the prefetch made 1-, 4- and 7-token calls 3–17 % slower
/// whether the weights were in L2 or L3; from 288 columns (576-byte rows) on it made
/// 4- and 7-token calls 5–9 % faster (DRAM- and L3-resident alike).
const PF_MIN_ROW_BYTES: usize = 512;

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
/// scratch between column blocks. Three loop orders:
/// - one token block (decode, verification of ≤ TB tokens), `x` in L2, no column
///   blocking: a single microkernel call runs all the task's row blocks back to back,
///   each over all columns with its accumulators in registers, reduced in registers at
///   the end (a token-block-outer order for several blocks was measured slower: the
///   weights then come from L2 once per token block);
/// - several token blocks, `x` in L2 (verification of more tokens, small batches): row
///   block → column block → token block, so each weight row is read sequentially (`R`
///   streams) and its L1-resident slice serves every token block;
/// - otherwise (large batches, prefill): row panel → column block → row block → token
///   block, so that `x[tokens, kc]` stays in L2 while all the panel's row blocks run over
///   it, and the panel's partial sums ([`PANEL_SCRATCH_BYTES`]) stay in L2 too (one panel
///   of all the task's rows streamed them through DRAM on one thread).
#[inline(always)]
unsafe fn rows_cfg<S: MatmulTiles, const DT: u8, const R: usize, const TBMAX: usize>(a: &MmArgs) {
    let esz = elem_size(DT);
    let step = step_len::<S>(DT);
    let steps = a.cols / step;
    let nb = a.tokens.div_ceil(TBMAX);
    let kc_steps = if nb == 1 {
        steps.max(1)
    } else {
        let w_steps = W_BLOCK_BYTES / (R * step * esz);
        let x_steps = X_BLOCK_BYTES / (a.tokens * step * 4);
        w_steps.min(x_steps).max(1)
    };
    let x_in_l2 = a.x_steps * a.tokens * step * 4 <= X_BLOCK_BYTES;
    let blocked = kc_steps < steps;
    let geo = RowsGeo {
        step,
        steps,
        kc_steps,
        blocked,
        sp: std::ptr::null_mut(),
    };
    if x_in_l2 && !blocked && nb == 1 {
        let full = (a.r1 - a.r0) / R;
        if full > 0 {
            column_block::<S, DT, R, TBMAX>(a, &geo, a.r0, full, 0, 0);
        }
        let r = a.r0 + full * R;
        if r < a.r1 {
            column_block::<S, DT, 1, TBMAX>(a, &geo, r, a.r1 - r, 0, 0);
        }
        return;
    }
    // The scratch pointer stays valid for this task: nothing else on this thread touches
    // the buffer until the task ends (no closure around the loops, so that everything
    // below is compiled with the path's target features).
    // Without `x` in L2, rows run in panels whose partial sums stay in L2.
    let panel = (PANEL_SCRATCH_BYTES / (a.tokens * 64) / R).max(1) * R;
    let scratch_rows = if x_in_l2 { R } else { (a.r1 - a.r0).min(panel) };
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
    let geo = RowsGeo { sp, ..geo };
    if x_in_l2 {
        let mut r = a.r0;
        while r < a.r1 {
            let full = r + R <= a.r1;
            let mut k0 = 0;
            loop {
                k0 = if full {
                    column_block::<S, DT, R, TBMAX>(a, &geo, r, 1, k0, 0)
                } else {
                    column_block::<S, DT, 1, TBMAX>(a, &geo, r, 1, k0, 0)
                };
                if k0 == steps {
                    break;
                }
            }
            r += if full { R } else { 1 };
        }
    } else {
        let mut p0 = a.r0;
        while p0 < a.r1 {
            let p1 = (p0 + panel).min(a.r1);
            let mut k0 = 0;
            loop {
                let mut r = p0;
                let mut next = k0;
                while r < p1 {
                    if r + R <= p1 {
                        next = column_block::<S, DT, R, TBMAX>(a, &geo, r, 1, k0, r - p0);
                        r += R;
                    } else {
                        next = column_block::<S, DT, 1, TBMAX>(a, &geo, r, 1, k0, r - p0);
                        r += 1;
                    }
                }
                k0 = next;
                if k0 == steps {
                    break;
                }
            }
            p0 = p1;
        }
    }
}

/// Loop constants of [`rows_cfg`].
#[derive(Clone, Copy)]
struct RowsGeo {
    step: usize,
    steps: usize,
    kc_steps: usize,
    blocked: bool,
    sp: *mut f32,
}

/// All token blocks of the `nrb` consecutive row blocks of `R` rows starting at row `r`,
/// over the column block starting at step `k0`, with partial sums at scratch row `srow`
/// (only used when `nrb == 1`). Returns the next column block's step.
///
/// Under a `convert` plan (16-bit weights, `nrb == 1`), the block's `R` rows × `ks` steps
/// (and the ragged tail, zero-padded to a step) are first widened to f32, in the packed
/// activations' column order (bf16: each step's even columns, then its odd ones), and every
/// token block runs the f32 microkernel on that copy. Each accumulator then gets the same
/// FMAs in the same order as from the 16-bit weights (a bf16 step is an even and an odd f32
/// step), so results are bitwise unchanged.
#[inline(always)]
unsafe fn column_block<S: MatmulTiles, const DT: u8, const R: usize, const TBMAX: usize>(
    a: &MmArgs,
    geo: &RowsGeo,
    r: usize,
    nrb: usize,
    k0: usize,
    srow: usize,
) -> usize {
    let esz = elem_size(DT);
    let step = geo.step;
    let wrs = a.cols * esz;
    let ks = geo.kc_steps.min(geo.steps - k0);
    let last = k0 + ks == geo.steps;
    let tail = if last { a.cols % step } else { 0 };
    let w = a.w.add(r * wrs + k0 * step * esz);
    // (A convert plan is 6 × 3 and always has several token blocks, so one row block per
    // call; the tile check keeps the copy's kernels out of the other plans' code.)
    let convert = DT != DT_F32 && TBMAX == 3 && a.tiles.convert && nrb == 1;
    let mut buf = Vec::new();
    // The weights the microkernel reads: (first byte, bytes between rows, steps, tail,
    // f32 between the steps of a token block's `x`). The f32 copy runs in steps of `L`:
    // a bf16 step's even half, then its odd half, as `x` is packed for convert plans
    // ([`super::pack_x`]).
    let (kw, kwrs, ksteps, ktail) = if convert {
        let row_f32 = (ks + usize::from(tail > 0)) * step;
        buf = CONVERTED.with(|c| c.take());
        let wf = aligned_f32(&mut buf, R * row_f32);
        for i in 0..R {
            let (src, dst) = (w.add(i * wrs), wf.add(i * row_f32));
            for s in 0..ks {
                widen_step::<S, DT>(src.add(s * step * esz), dst.add(s * step));
            }
            if tail > 0 {
                let mut pad = [0u8; 64];
                std::ptr::copy_nonoverlapping(
                    src.add(ks * step * esz),
                    pad.as_mut_ptr(),
                    tail * esz,
                );
                widen_step::<S, DT>(pad.as_ptr(), dst.add(ks * step));
            }
        }
        (wf as *const u8, row_f32 * 4, row_f32 / S::L, 0)
    } else {
        (w, wrs, ks, tail)
    };
    for (b, (t0, tb)) in token_blocks(a.tokens, TBMAX).enumerate() {
        let mut flags = 0;
        if last {
            flags |= MK_REDUCE;
        }
        // The first token block prefetches the next row block's slice, on rows long
        // enough for that to pay (see [`PF_MIN_ROW_BYTES`]); not from a converted copy.
        if b == 0 && wrs >= PF_MIN_ROW_BYTES && !convert {
            flags |= MK_PF;
        }
        let k = Mk {
            w: kw,
            wrs: kwrs,
            x: a.x.add((t0 * a.x_steps + k0 * tb) * step),
            sx: tb * if convert { S::L } else { step },
            steps: ksteps,
            tail: ktail,
            nrb,
            rows_left: a.n_rows - r,
            out: a.out.add(t0 * a.n_rows + r),
            ldo: a.n_rows,
            acc: if geo.blocked {
                geo.sp.add((srow * a.tokens + t0 * R) * 16)
            } else {
                std::ptr::null_mut()
            },
            load: k0 > 0,
            flags,
        };
        if convert {
            token_block::<S, DT_F32, R, TBMAX>(tb, &k);
        } else {
            token_block::<S, DT, R, TBMAX>(tb, &k);
        }
    }
    if convert {
        CONVERTED.with(|c| c.set(buf));
    }
    k0 + ks
}

/// Widens one weight step at `src` (`2L` bf16 or `L` f16) to f32 at `dst` in the packed
/// activations' order: bf16 as its `L` even columns then its `L` odd ones.
#[inline(always)]
unsafe fn widen_step<S: Simd, const DT: u8>(src: *const u8, dst: *mut f32) {
    if DT == DT_BF16 {
        let (e, o) = S::bf16x2(src);
        S::store(dst, e);
        S::store(dst.add(S::L), o);
    } else {
        S::store(dst, S::f16(src));
    }
}

/// [`MatmulTiles::mk`] for a token block of `tb ≤ TBMAX` tokens.
#[inline(always)]
unsafe fn token_block<S: MatmulTiles, const DT: u8, const R: usize, const TBMAX: usize>(
    tb: usize,
    k: &Mk,
) {
    match tb {
        1 => S::mk::<DT, R, 1>(k),
        2 if TBMAX >= 2 => S::mk::<DT, R, 2>(k),
        3 if TBMAX >= 3 => S::mk::<DT, R, 3>(k),
        4 if TBMAX >= 4 => S::mk::<DT, R, 4>(k),
        5 if TBMAX >= 5 => S::mk::<DT, R, 5>(k),
        6 if TBMAX >= 6 => S::mk::<DT, R, 6>(k),
        7 if TBMAX >= 7 => S::mk::<DT, R, 7>(k),
        8 if TBMAX >= 8 => S::mk::<DT, R, 8>(k),
        _ => unreachable!("token block larger than the tile"),
    }
}
