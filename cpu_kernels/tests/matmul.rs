//! Conformance of `matmul_with` on every supported path against `matmul_reference`
//! (f64 accumulation of the same stored weights).
//!
//! Tolerance: for each output, `|got − ref| ≤ 1e-5 · Σ_i |x_i · w_i| + 1e-30` — relative to
//! the magnitude of the terms of the dot product (f32 accumulation in a different order
//! than the f64 reference; the bound is far above the ~1e-7 typical error and far below
//! any indexing bug).

mod common;
use common::*;
use specmoe_cpu_kernels::dtype::load_f32;
use specmoe_cpu_kernels::matmul::{
    matmul, matmul_many, matmul_many_with, matmul_reference, matmul_with, MatmulJob, WeightMatrix,
};
use specmoe_cpu_kernels::{DType, Isa};

fn check(
    isa: Isa,
    dtype: DType,
    rows: usize,
    cols: usize,
    tokens: usize,
    offset: usize,
    seed: u64,
) {
    let mut r = rng(seed);
    let buf = rand_stored(&mut r, dtype, rows * cols, offset);
    let w = WeightMatrix::new(dtype, rows, cols, &buf[offset..]);
    let x = rand_f32(&mut r, tokens * cols, 1.0);
    let reference = matmul_reference(&x, tokens, &w);
    let mut out = vec![f32::NAN; tokens * rows];
    matmul_with(isa, &x, tokens, &w, &mut out);
    for t in 0..tokens {
        for o in 0..rows {
            let mag: f64 = (0..cols)
                .map(|i| (x[t * cols + i] * load_f32(w.data, dtype, o * cols + i)).abs() as f64)
                .sum();
            let got = out[t * rows + o];
            let want = reference[t * rows + o];
            let err = (got as f64 - want as f64).abs();
            assert!(
                err <= 1e-5 * mag + 1e-30,
                "{isa} {dtype} rows={rows} cols={cols} tokens={tokens} off={offset}: \
                 out[{t},{o}] = {got}, reference {want}, |err| {err:e} > 1e-5 × {mag:e}"
            );
        }
    }
}

const TOKENS: [usize; 10] = [1, 2, 3, 5, 7, 8, 9, 16, 17, 64];

#[test]
fn small_ragged_shapes_every_path_dtype_and_token_count() {
    let shapes = [
        (1, 1),
        (5, 7),
        (7, 16),
        (13, 31),
        (6, 33),
        (19, 100),
        (25, 257),
    ];
    for isa in paths() {
        for dtype in DTYPES {
            for (si, &(rows, cols)) in shapes.iter().enumerate() {
                for &tokens in &TOKENS {
                    check(
                        isa,
                        dtype,
                        rows,
                        cols,
                        tokens,
                        si % 3,
                        (si * 100 + tokens) as u64,
                    );
                }
            }
        }
    }
}

#[test]
fn long_rows_cross_several_column_blocks() {
    // cols > the K block of every path (≤ 1536 columns), ragged; rows not a multiple of
    // any row block; enough bytes to run in parallel tasks.
    for isa in paths() {
        for dtype in DTYPES {
            // 9 and 16 tokens take AVX-512's 8-token blocks for long rows.
            for &tokens in &[1, 4, 8, 9, 16] {
                check(isa, dtype, 131, 3001, tokens, 1, 7 + tokens as u64);
            }
        }
    }
}

#[test]
fn many_rows_parallel_tasks() {
    for isa in paths() {
        for &tokens in &[1, 8, 17] {
            check(isa, DType::BF16, 1030, 512, tokens, 0, 11);
        }
    }
}

#[test]
fn empty_and_degenerate_shapes() {
    for isa in paths() {
        // cols == 0: out is zero.
        let w = WeightMatrix::new(DType::F32, 3, 0, &[]);
        let mut out = vec![f32::NAN; 2 * 3];
        matmul_with(isa, &[], 2, &w, &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
        // tokens == 0 and rows == 0: nothing to do.
        let data = vec![0u8; 4 * 5 * 2];
        let w = WeightMatrix::new(DType::BF16, 4, 5, &data);
        matmul_with(isa, &[], 0, &w, &mut []);
        let w = WeightMatrix::new(DType::BF16, 0, 5, &[]);
        matmul_with(isa, &[0.0; 10], 2, &w, &mut []);
    }
}

#[test]
fn plain_entry_and_unsupported_path_fall_back() {
    let mut r = rng(3);
    let buf = rand_stored(&mut r, DType::F16, 9 * 40, 0);
    let w = WeightMatrix::new(DType::F16, 9, 40, &buf);
    let x = rand_f32(&mut r, 3 * 40, 1.0);
    let reference = matmul_reference(&x, 3, &w);
    let mut out = vec![0.0; 27];
    matmul(&x, 3, &w, &mut out);
    for (a, b) in out.iter().zip(&reference) {
        assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
    }
    // A path this CPU lacks runs the portable code instead of faulting.
    for isa in Isa::ALL.into_iter().filter(|i| !i.is_supported()) {
        let mut out2 = vec![0.0; 27];
        matmul_with(isa, &x, 3, &w, &mut out2);
        for (a, b) in out2.iter().zip(&reference) {
            assert!((a - b).abs() <= 1e-4, "{isa}: {a} vs {b}");
        }
    }
}

#[test]
#[should_panic(expected = "x must be [tokens, in]")]
fn wrong_x_shape_panics() {
    let data = vec![0u8; 2 * 3 * 4];
    let w = WeightMatrix::new(DType::F32, 2, 3, &data);
    let mut out = vec![0.0; 2];
    matmul_with(Isa::Scalar, &[0.0; 4], 1, &w, &mut out);
}

#[test]
fn special_values_propagate_like_the_reference() {
    // Large magnitudes and exact zeros (no spurious NaN from padding).
    for isa in paths() {
        for dtype in DTYPES {
            let rows = 7;
            let cols = 45;
            let mut buf = vec![0u8; rows * cols * dtype.size()];
            for i in 0..rows * cols {
                let v = if i % 5 == 0 {
                    0.0
                } else {
                    ((i % 11) as f32 - 5.0) * 100.0
                };
                specmoe_cpu_kernels::dtype::store_f32(&mut buf, dtype, i, v);
            }
            let w = WeightMatrix::new(dtype, rows, cols, &buf);
            let x: Vec<f32> = (0..2 * cols)
                .map(|i| ((i % 7) as f32 - 3.0) * 0.25)
                .collect();
            let reference = matmul_reference(&x, 2, &w);
            let mut out = vec![0.0; 2 * rows];
            matmul_with(isa, &x, 2, &w, &mut out);
            for (a, b) in out.iter().zip(&reference) {
                assert!((a - b).abs() <= 1e-3, "{isa} {dtype}: {a} vs {b}");
            }
        }
    }
}

/// `matmul` of `n` tokens gives, row for row, bitwise the outputs of `n` one-token calls:
/// the accumulation order of an output never depends on the token count or on how tokens
/// are blocked (what makes greedy speculative verification bit-exact).
#[test]
fn batch_invariance_bitwise_every_path_dtype_and_token_count() {
    // Ragged shapes, column tails, row tails, and matrices big enough to run in parallel
    // tasks (> SEQUENTIAL_BYTES) and, with many tokens, to take the column-blocked orders.
    let shapes = [
        (1, 1),
        (5, 7),
        (13, 31),
        (25, 257),
        (37, 512),
        (128, 128),
        (70, 1500),
        (131, 3001),
    ];
    let token_counts = [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 64];
    for isa in paths() {
        for dtype in DTYPES {
            for (si, &(rows, cols)) in shapes.iter().enumerate() {
                let mut r = rng(1000 + si as u64);
                let buf = rand_stored(&mut r, dtype, rows * cols, si % 3);
                let w = WeightMatrix::new(dtype, rows, cols, &buf[si % 3..]);
                let x = rand_f32(&mut r, 64 * cols, 1.0);
                let mut single = vec![0.0f32; 64 * rows];
                for t in 0..64 {
                    matmul_with(
                        isa,
                        &x[t * cols..(t + 1) * cols],
                        1,
                        &w,
                        &mut single[t * rows..(t + 1) * rows],
                    );
                }
                for &n in &token_counts {
                    let mut out = vec![f32::NAN; n * rows];
                    matmul_with(isa, &x[..n * cols], n, &w, &mut out);
                    for t in 0..n {
                        for o in 0..rows {
                            let (got, want) = (out[t * rows + o], single[t * rows + o]);
                            assert!(
                                got.to_bits() == want.to_bits(),
                                "{isa} {dtype} [{rows}, {cols}] tokens={n}: out[{t},{o}] = \
                                 {got:e}, one-token call {want:e}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_many_is_bitwise_matmul_per_job_on_every_path() {
    let mut r = rng(77);
    let cols = 70;
    // Mixed dtypes (two packings of x), a matrix with no rows, and one large enough for the
    // parallel loop (≥ 256 KiB of weights in all).
    let specs = [
        (DType::BF16, 37usize),
        (DType::F32, 5),
        (DType::F16, 300),
        (DType::BF16, 0),
        (DType::BF16, 2100),
    ];
    let bufs: Vec<Vec<u8>> = specs
        .iter()
        .map(|&(dt, rows)| rand_stored(&mut r, dt, rows * cols, 0))
        .collect();
    let ws: Vec<WeightMatrix<'_>> = specs
        .iter()
        .zip(&bufs)
        .map(|(&(dt, rows), b)| WeightMatrix::new(dt, rows, cols, b))
        .collect();
    for isa in paths() {
        for tokens in [1usize, 3, 8] {
            let x = rand_f32(&mut r, tokens * cols, 1.0);
            let mut outs: Vec<Vec<f32>> =
                ws.iter().map(|w| vec![f32::NAN; tokens * w.rows]).collect();
            {
                let mut jobs: Vec<MatmulJob<'_, '_>> = ws
                    .iter()
                    .zip(outs.iter_mut())
                    .map(|(w, out)| MatmulJob { w: *w, out })
                    .collect();
                matmul_many_with(isa, &x, tokens, &mut jobs);
            }
            for (w, got) in ws.iter().zip(&outs) {
                let mut want = vec![0.0f32; tokens * w.rows];
                matmul_with(isa, &x, tokens, w, &mut want);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa} {} [{}, {cols}] tokens={tokens}: matmul_many differs from matmul",
                    w.dtype,
                    w.rows
                );
            }
        }
    }
    // The plain entry point on the active path.
    let x = rand_f32(&mut r, 2 * cols, 1.0);
    let mut a = vec![0.0f32; 2 * 37];
    let mut b = vec![0.0f32; 2 * 5];
    matmul_many(
        &x,
        2,
        &mut [
            MatmulJob {
                w: ws[0],
                out: &mut a,
            },
            MatmulJob {
                w: ws[1],
                out: &mut b,
            },
        ],
    );
    let mut want = vec![0.0f32; 2 * 37];
    matmul(&x, 2, &ws[0], &mut want);
    assert_eq!(a, want);
}
