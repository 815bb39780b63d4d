//! Software prefetch of the next KV chunk, spread over the current chunk's work.
//!
//! A work item reads its heads' keys and values chunk by chunk straight from DRAM (a KV
//! cache of thousands of positions does not stay in cache). Issuing every line of the next
//! chunk at once (4096 lines for 32 positions × 8 heads of 128 f32, K and V) stalls the
//! core: each prefetch that misses L1 holds a fill buffer until its line arrives, so a
//! burst of them waits on DRAM as a demand copy would (profiled: 38 % of an 8-token
//! verification call and 78 % of a decode call sat on the instruction after a prefetch).
//! [`ChunkPrefetch`] instead walks the next chunk's lines in memory order, as contiguous
//! runs (a token-major cache: per position, all the item's heads; head-major: per head,
//! all the chunk's positions) or row by row, and issues them spread over the current
//! chunk's work: at most one per step inside the score and output tiles (in the broadcast
//! form a quarter and the rest), and in the small form also a few before each transposed
//! block of keys ([`SmallSpread`]). The stream then runs through every phase of the work:
//! the phases without prefetches leave the fill buffers idle, and a burst of prefetches
//! stalls the core. [`sw_prefetch`] says when it is worth doing.
//!
//! Measured (batch 4 × 2048 positions, token-major, one thread): prefetch instructions
//! alone stream the cache at ≈ 13 GB/s, and the same decode work on cache-resident rows
//! took ≈ 4 ms on top of it — with the prefetches in three batches per head, the two
//! added up (≈ 10 ms); spread over the tiles and blocks, decode takes 8.3–8.9 ms (f32).

use super::{KvView, SeqRef};
use crate::simd::Simd;

/// Below this many bytes of K and V per sequence (one layer, all KV heads) the next chunk
/// is not prefetched by software: such a cache stays in L2 or the LLC between steps, and
/// the prefetch instructions only cost (the bundled pair's speculative decode, ≈ 300 KB
/// per layer, was 4–5 % slower with them).
const PF_MIN_KV_BYTES: usize = 1 << 20;

/// Whether a sequence's next KV chunk is prefetched by software ([`ChunkPrefetch`]) or
/// left to the hardware prefetcher: from [`PF_MIN_KV_BYTES`] on, in both forms, every
/// layout and dtype. Measured (batch 4 × 2048 positions, 8 KV heads of 128, alternated
/// binaries): the broadcast form gains in every layout and dtype (head-major 8-token calls
/// 5–9 % faster, f32 or bf16). The small form, with the prefetches spread over its tiles
/// ([`SmallSpread`]), gains in every case too; head-major 2-byte decode, which was up to
/// 8 % slower with the earlier batches, is now 20–25 % faster with them (bf16 3.3–3.6 →
/// 2.7 ms on two threads).
pub(super) fn sw_prefetch(s: &SeqRef<'_>) -> bool {
    let lay = s.k.layout;
    let kv_bytes = 2 * s.shape.kv_len * lay.kv_heads * lay.head_dim * s.k.dtype.size();
    kv_bytes >= PF_MIN_KV_BYTES
}

/// Calls a row or dim count `n` takes in tiles of descending powers of two up to `max`
/// (a power of two), as the small form's tile loops split it: `n / max` full tiles and
/// one per set bit of the rest.
pub(super) fn tile_calls(n: usize, max: usize) -> usize {
    n / max + (n % max).count_ones() as usize
}

/// How the small form spreads one KV head's share of the next chunk's lines over that
/// head's work, so that the prefetch stream runs through every phase of it instead of in
/// bursts (a burst waits for fill buffers as a demand copy would, and the phases without
/// prefetches leave them idle): one line per step of the score tiles and of the output
/// tiles, the rest before each transposed block of `Kᵀ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SmallSpread {
    /// Steps of each score tile that prefetch (of `d`).
    pub(super) qk_n: usize,
    /// Position steps of each output tile that prefetch (of the chunk's positions).
    pub(super) pv_n: usize,
    /// Lines issued before each transposed block.
    pub(super) per_block: usize,
}

impl SmallSpread {
    /// The plan for `lines` lines over `qk_calls` score tiles of `d` steps, `pv_calls`
    /// output tiles of `cn` steps and `blocks` transposed blocks. The tiles take one line
    /// per step, in proportion when they have more steps than lines; the blocks take the
    /// rest. At least `lines` lines are planned (rounded up; the cursor stops at its end).
    pub(super) fn new(
        lines: usize,
        qk_calls: usize,
        d: usize,
        pv_calls: usize,
        cn: usize,
        blocks: usize,
    ) -> Self {
        let steps = qk_calls * d + pv_calls * cn;
        let share = |n: usize| {
            if steps == 0 {
                0
            } else {
                (n * lines).div_ceil(steps).min(n)
            }
        };
        let (qk_n, pv_n) = (share(d), share(cn));
        let rest = lines.saturating_sub(qk_calls * qk_n + pv_calls * pv_n);
        SmallSpread {
            qk_n,
            pv_n,
            per_block: rest.div_ceil(blocks.max(1)),
        }
    }
}

/// How the lines of a chunk group into contiguous runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Runs {
    /// Heads adjacent within a token (token-major): one run per position and buffer,
    /// over all the item's heads; runs in order (position, K/V).
    Token,
    /// Positions adjacent within a head (head-major): one run per buffer and head, over
    /// all the chunk's positions; runs in order (K/V, head).
    Head,
    /// One run per row (neither adjacent, or asked for with `by_rows`);
    /// runs in order (position, K/V, head).
    Row,
}

/// A cursor over the cache lines of KV rows `t0 .. t0 + n` of heads `h0 .. h0 + nh`, K and
/// V, issuing L2 prefetches a batch at a time ([`ChunkPrefetch::advance`]) or one at a
/// time inside a tile ([`ChunkPrefetch::next`]).
///
/// The lines are walked as contiguous runs in memory order ([`Runs`]), so that the next
/// line is one add away from the last: inside a tile a prefetch costs a few instructions,
/// and the output tiles run close to the core's issue width.
pub(super) struct ChunkPrefetch<'a> {
    kv: [&'a KvView<'a>; 2],
    t0: usize,
    h0: usize,
    nh: usize,
    runs: Runs,
    /// Lines per run.
    run_lines: usize,
    /// Runs in all.
    n_runs: usize,
    /// Runs not opened yet.
    runs_left: usize,
    /// The next run to open: position `t0 + p`, buffer `which` (0 = K, 1 = V), head
    /// `h0 + h` (stepped in the order of [`Runs`], so that opening a run never divides).
    p: usize,
    which: usize,
    h: usize,
    /// The next line of the open run and how many of its lines are left.
    at: *const u8,
    left: usize,
}

impl<'a> ChunkPrefetch<'a> {
    /// The lines of rows `t0 .. t0 + n` of heads `h0 .. h0 + nh` of `k` and `v` (which must
    /// share one layout and dtype); `n = 0` for nothing. Walked in the longest contiguous
    /// runs the layout has (the broadcast form's order: with a head-major cache, 8-token
    /// calls took 6–10 % less time than row by row), or with `by_rows` one row per run in
    /// the order (position, K/V, head) (the small form's: with a head-major cache, decode
    /// calls took ≈ 10 % more time with the runs).
    pub(super) fn new(
        k: &'a KvView<'a>,
        v: &'a KvView<'a>,
        t0: usize,
        n: usize,
        h0: usize,
        nh: usize,
        by_rows: bool,
    ) -> Self {
        let lay = k.layout;
        let runs = if by_rows {
            Runs::Row
        } else if lay.token_stride == lay.head_dim {
            Runs::Head
        } else if lay.head_stride == lay.head_dim {
            Runs::Token
        } else {
            Runs::Row
        };
        let row_bytes = k.layout.head_dim * k.dtype.size();
        let n = if nh == 0 || row_bytes == 0 { 0 } else { n };
        let (run_bytes, n_runs) = match runs {
            Runs::Head => (n * row_bytes, 2 * nh),
            Runs::Token => (nh * row_bytes, 2 * n),
            Runs::Row => (row_bytes, 2 * n * nh),
        };
        ChunkPrefetch {
            kv: [k, v],
            t0,
            h0,
            nh,
            runs,
            run_lines: run_bytes.div_ceil(64),
            n_runs: if n == 0 { 0 } else { n_runs },
            runs_left: if n == 0 { 0 } else { n_runs },
            p: 0,
            which: 0,
            h: 0,
            at: std::ptr::null(),
            left: 0,
        }
    }

    /// Lines in all (what [`ChunkPrefetch::advance`] issues over the whole chunk).
    pub(super) fn lines(&self) -> usize {
        self.n_runs * self.run_lines
    }

    /// Issues the next `count` lines' prefetches into L2 (fewer at the end). Prefetches
    /// never fault; every address lies inside the rows it belongs to.
    #[inline(always)]
    pub(super) unsafe fn advance<S: Simd>(&mut self, count: usize) {
        self.advance_with(count, |p| S::prefetch_l2(p));
    }

    /// Issues the next line's prefetch into L2 (nothing once every line is issued): the
    /// per-step form of [`ChunkPrefetch::advance`] that the tiles call inline.
    #[inline(always)]
    pub(super) unsafe fn next<S: Simd>(&mut self) {
        self.next_with(|p| S::prefetch_l2(p));
    }

    /// [`ChunkPrefetch::next`] with `f` called on the line's first byte instead; false
    /// (and no call) once every line is issued.
    #[inline(always)]
    fn next_with(&mut self, f: impl FnOnce(*const u8)) -> bool {
        if self.left == 0 && !self.open_run() {
            return false;
        }
        f(self.at);
        self.at = self.at.wrapping_add(64);
        self.left -= 1;
        true
    }

    /// Opens the next run (false when there is none left).
    #[inline(never)]
    fn open_run(&mut self) -> bool {
        if self.runs_left == 0 {
            return false;
        }
        let kv = self.kv[self.which];
        let off = kv.layout.offset(self.t0 + self.p, self.h0 + self.h) * kv.dtype.size();
        self.at = kv.data.as_ptr().wrapping_add(off);
        self.left = self.run_lines;
        self.runs_left -= 1;
        match self.runs {
            Runs::Token => {
                self.which ^= 1;
                self.p += usize::from(self.which == 0);
            }
            Runs::Head => {
                self.h += 1;
                if self.h == self.nh {
                    self.h = 0;
                    self.which += 1;
                }
            }
            Runs::Row => {
                self.h += 1;
                if self.h == self.nh {
                    self.h = 0;
                    self.which ^= 1;
                    self.p += usize::from(self.which == 0);
                }
            }
        }
        true
    }

    /// [`ChunkPrefetch::advance`] with `f` called on each line's first byte instead.
    #[inline(always)]
    fn advance_with(&mut self, count: usize, mut f: impl FnMut(*const u8)) {
        for _ in 0..count {
            if !self.next_with(&mut f) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::KvLayout;
    use crate::DType;

    /// All lines that `pf` hands out, checked to be the same through
    /// [`ChunkPrefetch::advance_with`] in batches of 5 and through
    /// [`ChunkPrefetch::next_with`] one at a time, and nothing after the last.
    fn walk(new: impl Fn() -> ChunkPrefetch<'static>) -> Vec<usize> {
        let mut pf = new();
        let mut seen = Vec::new();
        loop {
            let before = seen.len();
            pf.advance_with(5, |p| seen.push(p as usize));
            if seen.len() < before + 5 {
                break;
            }
        }
        assert_eq!(seen.len(), new().lines());
        let mut pf = new();
        let mut one_by_one = Vec::new();
        while pf.next_with(|p| one_by_one.push(p as usize)) {}
        assert_eq!(one_by_one, seen);
        assert!(!pf.next_with(|_| panic!("every line was issued")));
        seen
    }

    /// Rows 4..7 of heads 1..3 of 80 bytes (2 lines) row by row: per position, K (at
    /// `k0`) then V (at `v0`), per head one row starting at f32 element `row(t, h)`.
    fn row_by_row(k0: usize, v0: usize, row: impl Fn(usize, usize) -> usize) -> Vec<usize> {
        let mut want = Vec::new();
        for t in 4..7 {
            for base in [k0, v0] {
                for h in 1..3 {
                    want.extend((0..2).map(|line| base + row(t, h) * 4 + 64 * line));
                }
            }
        }
        want
    }

    fn view(layout: KvLayout, data: &'static [u8]) -> &'static KvView<'static> {
        Box::leak(Box::new(KvView {
            dtype: DType::F32,
            data,
            layout,
        }))
    }

    /// The software-prefetch policy ([`sw_prefetch`]): never below 1 MiB of K and V per
    /// sequence, always from there, whatever the layout and dtype.
    #[test]
    fn software_prefetch_policy() {
        let on = |layout: KvLayout, dtype: DType, kv_len: usize| {
            let kv = KvView {
                dtype,
                data: &[],
                layout,
            };
            let s = SeqRef {
                q: &[],
                k: kv,
                v: kv,
                shape: crate::attention::AttnShape {
                    n_queries: 1,
                    n_heads: 32,
                    kv_len,
                    scale: 1.0,
                },
                out: crate::SendPtr(std::ptr::null_mut()),
            };
            sw_prefetch(&s)
        };
        let (tm, hm) = (
            KvLayout::token_major(8, 128),
            KvLayout::head_major(8, 128, 4096),
        );
        // 8 heads × 128 f32 × K and V = 8 KiB per position: 1 MiB from 128 positions;
        // 2-byte rows from 256.
        for lay in [tm, hm] {
            assert!(!on(lay, DType::F32, 127));
            assert!(on(lay, DType::F32, 128));
            for dt in [DType::BF16, DType::F16] {
                assert!(!on(lay, dt, 255));
                assert!(on(lay, dt, 256));
                assert!(on(lay, dt, 2048));
            }
        }
    }

    /// Every line of the chunk's rows, once, as contiguous runs in memory order for each
    /// layout, and nothing for an empty range. Rows of 20 f32 (80 bytes), 3 KV heads,
    /// rows 4..7 of heads 1..3.
    #[test]
    fn walks_every_line_of_the_rows_once_in_runs() {
        let buf = |n: usize| -> &'static [u8] { Box::leak(vec![0u8; n].into_boxed_slice()) };
        let (kb, vb) = (buf(10 * 3 * 20 * 4), buf(10 * 3 * 20 * 4));
        let (k0, v0) = (kb.as_ptr() as usize, vb.as_ptr() as usize);

        // Token-major: per position, K then V, both heads' rows as one 160-byte run.
        let lay = KvLayout::token_major(3, 20);
        let (k, v) = (view(lay, kb), view(lay, vb));
        let mut want = Vec::new();
        for t in 4..7 {
            for base in [k0, v0] {
                for line in 0..3 {
                    want.push(base + (t * 60 + 20) * 4 + 64 * line);
                }
            }
        }
        assert_eq!(walk(|| ChunkPrefetch::new(k, v, 4, 3, 1, 2, false)), want);

        // Head-major (capacity 10): K then V, per head the 3 positions as one 240-byte run.
        let lay = KvLayout::head_major(3, 20, 10);
        let (k, v) = (view(lay, kb), view(lay, vb));
        let mut want = Vec::new();
        for base in [k0, v0] {
            for h in 1..3 {
                for line in 0..4 {
                    want.push(base + (h * 200 + 4 * 20) * 4 + 64 * line);
                }
            }
        }
        assert_eq!(walk(|| ChunkPrefetch::new(k, v, 4, 3, 1, 2, false)), want);
        // The same lines row by row.
        let want = row_by_row(k0, v0, |t, h| h * 200 + t * 20);
        assert_eq!(walk(|| ChunkPrefetch::new(k, v, 4, 3, 1, 2, true)), want);

        // Padded rows (neither adjacent): per position, K then V, per head one row.
        let lay = KvLayout {
            kv_heads: 3,
            head_dim: 20,
            token_stride: 75,
            head_stride: 25,
        };
        let (kb, vb) = (buf(10 * 75 * 4), buf(10 * 75 * 4));
        let (k0, v0) = (kb.as_ptr() as usize, vb.as_ptr() as usize);
        let (k, v) = (view(lay, kb), view(lay, vb));
        let want = row_by_row(k0, v0, |t, h| t * 75 + h * 25);
        assert_eq!(walk(|| ChunkPrefetch::new(k, v, 4, 3, 1, 2, false)), want);

        // Nothing for an empty range.
        let mut none = ChunkPrefetch::new(k, v, 4, 0, 1, 2, false);
        assert_eq!(none.lines(), 0);
        none.advance_with(usize::MAX, |_| panic!("no line to prefetch"));
    }

    /// `tile_calls` counts the calls of the tile loops' greedy split (the largest power of
    /// two up to `max` that fits, repeatedly).
    #[test]
    fn tile_calls_match_the_greedy_split() {
        for max in [1, 2, 4, 8] {
            for n in 0..40 {
                let (mut left, mut calls) = (n, 0);
                while left > 0 {
                    let mut t = max;
                    while t > left {
                        t /= 2;
                    }
                    left -= t;
                    calls += 1;
                }
                assert_eq!(tile_calls(n, max), calls, "n = {n}, max = {max}");
            }
        }
        assert_eq!(tile_calls(12, 8), 2);
        assert_eq!(tile_calls(7, 4), 3);
    }

    /// The small form's plan covers every line, never more steps than a tile has, and
    /// over-plans by at most one line per call or block (rounding up).
    #[test]
    fn small_spread_covers_the_lines() {
        // Decode on AVX-512 (4 rows, d = 128, f32): 512 lines per head; 128 in the score
        // tile, 2 × 32 in the output tiles, 20 before each of 16 transposed blocks.
        let plan = SmallSpread::new(512, 1, 128, 2, 32, 16);
        assert_eq!(
            plan,
            SmallSpread {
                qk_n: 128,
                pv_n: 32,
                per_block: 20
            }
        );
        // Fewer lines than tile steps: the tiles share them in proportion, no blocks.
        let plan = SmallSpread::new(100, 1, 128, 2, 32, 16);
        assert_eq!((plan.qk_n, plan.pv_n, plan.per_block), (67, 17, 0));
        assert_eq!(
            SmallSpread::new(0, 1, 128, 2, 32, 16),
            SmallSpread {
                qk_n: 0,
                pv_n: 0,
                per_block: 0
            }
        );
        // No tile steps (an empty chunk): all before the blocks.
        assert_eq!(SmallSpread::new(30, 1, 0, 2, 0, 4).per_block, 8);
        let mut seed = 7u64;
        let mut rnd = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for _ in 0..2000 {
            let (lines, qk_calls, d) = (rnd(3000), rnd(4), rnd(300));
            let (pv_calls, cn, blocks) = (rnd(12), rnd(33), 1 + rnd(40));
            let p = SmallSpread::new(lines, qk_calls, d, pv_calls, cn, blocks);
            let planned = qk_calls * p.qk_n + pv_calls * p.pv_n + blocks * p.per_block;
            let case = format!("{lines} {qk_calls} {d} {pv_calls} {cn} {blocks}: {p:?}");
            assert!(p.qk_n <= d && p.pv_n <= cn, "{case}");
            assert!(planned >= lines, "{case}");
            assert!(planned <= lines + qk_calls + pv_calls + blocks, "{case}");
        }
    }
}
