//! Matmul of f32 activations by stored weights: `out[t, o] = Σ_i x[t, i] · W[o, i]`.
//!
//! Weights keep the Hugging Face layout `[out_features, in_features]` and their stored dtype
//! (f32, f16, bf16); they are converted in registers and read once per call whatever the
//! number of tokens, so a decode-time GEMV streams at DRAM bandwidth and an expert that
//! serves `k+1` verification tokens costs barely more than one that serves a single token.
//! Work is split over output rows with rayon.

use crate::dispatch::{active, Isa};
use crate::dtype::{load_f32, DType};
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

/// Rows per parallel task: large enough to amortise scheduling, small enough to balance.
pub(crate) const ROW_BLOCK: usize = 64;

/// `out[tokens, w.rows] = x[tokens, w.cols] · wᵀ` on the active path.
///
/// Panics if `x.len() != tokens * w.cols` or `out.len() != tokens * w.rows`.
pub fn matmul(x: &[f32], tokens: usize, w: &WeightMatrix<'_>, out: &mut [f32]) {
    matmul_with(active(), x, tokens, w, out)
}

/// [`matmul`] on an explicit path. Falls back to scalar for a path the CPU lacks.
pub fn matmul_with(isa: Isa, x: &[f32], tokens: usize, w: &WeightMatrix<'_>, out: &mut [f32]) {
    assert_eq!(x.len(), tokens * w.cols, "matmul: x must be [tokens, in]");
    assert_eq!(
        out.len(),
        tokens * w.rows,
        "matmul: out must be [tokens, out]"
    );
    let _ = isa; // vectorised paths plug in here
    par_rows(tokens, w, out, |rows, o| scalar_tile(x, tokens, rows, o));
}

/// Splits `w` into row blocks processed in parallel; `tile(rows, out_tile)` computes
/// `out_tile[r * tokens + t]` (row-major over the block's rows, then tokens) which is
/// then scattered into `out[tokens, rows]`.
pub(crate) fn par_rows<F>(tokens: usize, w: &WeightMatrix<'_>, out: &mut [f32], tile: F)
where
    F: Fn(&WeightMatrix<'_>, &mut [f32]) + Sync,
{
    let n_rows = w.rows;
    if tokens == 1 {
        out.par_chunks_mut(ROW_BLOCK)
            .enumerate()
            .for_each(|(b, o)| {
                let start = b * ROW_BLOCK;
                let sub = w.row_range(start, start + o.len());
                tile(&sub, o);
            });
        return;
    }
    let blocks: Vec<(usize, Vec<f32>)> = (0..n_rows.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|b| {
            let start = b * ROW_BLOCK;
            let end = (start + ROW_BLOCK).min(n_rows);
            let sub = w.row_range(start, end);
            let mut buf = vec![0.0f32; (end - start) * tokens];
            tile(&sub, &mut buf);
            (start, buf)
        })
        .collect();
    for (start, buf) in blocks {
        let rows = buf.len() / tokens;
        for r in 0..rows {
            for t in 0..tokens {
                out[t * n_rows + start + r] = buf[r * tokens + t];
            }
        }
    }
}

/// Scalar reference tile: `out[r * tokens + t] = Σ_i x[t, i] · w[r, i]`.
fn scalar_tile(x: &[f32], tokens: usize, w: &WeightMatrix<'_>, out: &mut [f32]) {
    let mut row = vec![0.0f32; w.cols];
    for r in 0..w.rows {
        w.row_to_f32(r, &mut row);
        for t in 0..tokens {
            let xs = &x[t * w.cols..(t + 1) * w.cols];
            let mut acc = 0.0f32;
            for (a, b) in xs.iter().zip(&row) {
                acc += a * b;
            }
            out[r * tokens + t] = acc;
        }
    }
}

/// Plain scalar reference used by conformance tests: f64 accumulation, no tiling.
pub fn matmul_reference(x: &[f32], tokens: usize, w: &WeightMatrix<'_>) -> Vec<f32> {
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
