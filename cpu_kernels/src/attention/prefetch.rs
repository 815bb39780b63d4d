//! Software prefetch of the next KV chunk, spread over the current chunk's work.
//!
//! A work item reads its heads' keys and values chunk by chunk straight from DRAM (a KV
//! cache of thousands of positions does not stay in cache). Issuing every line of the next
//! chunk at once (4096 lines for 32 positions × 8 heads of 128 f32, K and V) stalls the
//! core: each prefetch that misses L1 holds a fill buffer until its line arrives, so a
//! burst of them waits on DRAM as a demand copy would (profiled: 38 % of an 8-token
//! verification call and 78 % of a decode call sat on the instruction after a prefetch).
//! [`ChunkPrefetch`] instead walks the next chunk's lines in memory order (position, then K
//! and V, then head, then line: a token-major cache with every head in the item is read
//! sequentially) and issues them spread over the current chunk's work (inside the output
//! tiles of the broadcast form, in three batches per head in the small form), so that the
//! DRAM reads overlap the arithmetic.

use super::{KvView, SeqRef};
use crate::simd::Simd;
use crate::DType;

/// Whether a sequence's next KV chunk is prefetched by software ([`ChunkPrefetch`]) or
/// left to the hardware prefetcher. Measured (batch 4 × 2048 positions, 8 KV heads of
/// 128, alternated binaries): a token-major cache (each head's rows `kv_heads · d` apart)
/// always gains; a head-major one (rows contiguous) gains with f32 rows (decode 7–10 %,
/// 8-token verification 7–9 % faster) but not with 2-byte rows (bf16 decode 4 % slower
/// with the prefetches, verification the same).
pub(super) fn sw_prefetch(s: &SeqRef<'_>) -> bool {
    let lay = s.k.layout;
    lay.token_stride != lay.head_dim || s.k.dtype == DType::F32
}

/// A cursor over the cache lines of KV rows `t0 .. t0 + n` of heads `h0 .. h0 + nh`, K and
/// V, issuing L2 prefetches a batch at a time ([`ChunkPrefetch::advance`]).
pub(super) struct ChunkPrefetch<'a> {
    kv: [&'a KvView<'a>; 2],
    t0: usize,
    n: usize,
    h0: usize,
    nh: usize,
    /// Cache lines per row (`d` elements).
    row_lines: usize,
    // Position of the cursor: row `t0 + p`, buffer `which` (0 = K, 1 = V), head `h0 + h`,
    // line `line` of the row, which starts at `row` (set when `line` is 0).
    p: usize,
    which: usize,
    h: usize,
    line: usize,
    row: *const u8,
}

impl<'a> ChunkPrefetch<'a> {
    /// The lines of rows `t0 .. t0 + n` of heads `h0 .. h0 + nh` of `k` and `v` (which must
    /// share one layout and dtype); `n = 0` for nothing.
    pub(super) fn new(
        k: &'a KvView<'a>,
        v: &'a KvView<'a>,
        t0: usize,
        n: usize,
        h0: usize,
        nh: usize,
    ) -> Self {
        let row_bytes = k.layout.head_dim * k.dtype.size();
        ChunkPrefetch {
            kv: [k, v],
            t0,
            n: if nh == 0 || row_bytes == 0 { 0 } else { n },
            h0,
            nh,
            row_lines: row_bytes.div_ceil(64),
            p: 0,
            which: 0,
            h: 0,
            line: 0,
            row: std::ptr::null(),
        }
    }

    /// Lines in all (what [`ChunkPrefetch::advance`] issues over the whole chunk).
    pub(super) fn lines(&self) -> usize {
        2 * self.n * self.nh * self.row_lines
    }

    /// Issues the next `count` lines' prefetches into L2 (fewer at the end). Prefetches
    /// never fault; every address lies inside the row it belongs to.
    #[inline(always)]
    pub(super) unsafe fn advance<S: Simd>(&mut self, count: usize) {
        self.advance_with(count, |p| S::prefetch_l2(p));
    }

    /// Issues the next line's prefetch into L2 (nothing once every line is issued): the
    /// per-step form of [`ChunkPrefetch::advance`] that the output tiles call inline, the
    /// cursor then living in registers (a list of addresses filled between the tiles took
    /// ≈ 9 % of an 8-token call).
    #[inline(always)]
    pub(super) unsafe fn next<S: Simd>(&mut self) {
        self.next_with(|p| S::prefetch_l2(p));
    }

    /// [`ChunkPrefetch::next`] with `f` called on the line's first byte instead; false
    /// (and no call) once every line is issued.
    #[inline(always)]
    fn next_with(&mut self, f: impl FnOnce(*const u8)) -> bool {
        if self.p >= self.n {
            return false;
        }
        if self.line == 0 {
            self.row = self.row_at();
        }
        f(self.row.wrapping_add(64 * self.line));
        self.line += 1;
        if self.line == self.row_lines {
            self.line = 0;
            self.step_row();
        }
        true
    }

    /// First byte of the cursor's row.
    #[inline(always)]
    fn row_at(&self) -> *const u8 {
        let kv = self.kv[self.which];
        let at = kv.layout.offset(self.t0 + self.p, self.h0 + self.h) * kv.dtype.size();
        kv.data.as_ptr().wrapping_add(at)
    }

    /// Moves the cursor to the next row (head, then K/V, then position).
    #[inline(always)]
    fn step_row(&mut self) {
        self.h += 1;
        if self.h == self.nh {
            self.h = 0;
            self.which += 1;
            if self.which == 2 {
                self.which = 0;
                self.p += 1;
            }
        }
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

    /// Every line of the chunk's rows, once, in memory order (position, K then V, head,
    /// line), in batches that end exactly at the last line.
    #[test]
    fn walks_every_line_of_the_rows_once_in_order() {
        // Token-major, 3 KV heads of 20 f32 (80 bytes: 2 lines per row), 10 positions.
        let layout = KvLayout::token_major(3, 20);
        let k = vec![0u8; 10 * 3 * 20 * 4];
        let v = vec![0u8; 10 * 3 * 20 * 4];
        let kv_k = KvView {
            dtype: DType::F32,
            data: &k,
            layout,
        };
        let kv_v = KvView { data: &v, ..kv_k };
        // Rows 4..7 of heads 1..3.
        let mut pf = ChunkPrefetch::new(&kv_k, &kv_v, 4, 3, 1, 2);
        assert_eq!(pf.lines(), 2 * 3 * 2 * 2);
        let mut seen = Vec::new();
        while seen.len() < pf.lines() + 5 {
            let before = seen.len();
            pf.advance_with(5, |p| seen.push(p as usize));
            if seen.len() == before {
                break;
            }
        }
        let mut want = Vec::new();
        for t in 4..7 {
            for base in [k.as_ptr() as usize, v.as_ptr() as usize] {
                for h in 1..3 {
                    for line in 0..2 {
                        want.push(base + (t * 60 + h * 20) * 4 + 64 * line);
                    }
                }
            }
        }
        assert_eq!(seen, want);
        // `next_with` hands out the same lines, one at a time, then nothing.
        let mut pf = ChunkPrefetch::new(&kv_k, &kv_v, 4, 3, 1, 2);
        let mut one_by_one = Vec::new();
        while pf.next_with(|p| one_by_one.push(p as usize)) {}
        assert_eq!(one_by_one, want);
        assert!(!pf.next_with(|_| panic!("every line was issued")));
        // Nothing for an empty range.
        let mut none = ChunkPrefetch::new(&kv_k, &kv_v, 4, 0, 1, 2);
        assert_eq!(none.lines(), 0);
        none.advance_with(usize::MAX, |_| panic!("no line to prefetch"));
    }
}
