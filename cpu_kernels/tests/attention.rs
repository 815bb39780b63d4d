//! Conformance of the chunked verification attention on every supported path against
//! `attention_scalar` (two-pass softmax per query and head).
//!
//! Tolerance: `|got − ref| ≤ 2e-5 · max_p |V[p]| + 1e-6` per output element — the output
//! is a convex combination of value rows, so its magnitude is bounded by the largest value
//! element; the kernel differs from the reference only in summation order, the vector
//! `exp` (≤ 2 ulp) and the online rescaling.

mod common;
use common::*;
use specmoe_cpu_kernels::attention::*;
use specmoe_cpu_kernels::dtype::load_f32;
use specmoe_cpu_kernels::{DType, Isa};

struct Case {
    n: usize,
    kv_len: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
    dtype: DType,
    head_major: bool,
}

struct Data {
    q: Vec<f32>,
    k: Vec<u8>,
    v: Vec<u8>,
    layout: KvLayout,
    vmax: f32,
}

fn make(c: &Case, seed: u64) -> Data {
    let mut r = rng(seed);
    // Capacity larger than kv_len: views must respect the layout, not assume density.
    let cap = c.kv_len + 3;
    let layout = if c.head_major {
        KvLayout::head_major(c.kv_heads, c.d, cap)
    } else {
        KvLayout::token_major(c.kv_heads, c.d)
    };
    let elems = cap * c.kv_heads * c.d;
    let q = rand_f32(&mut r, c.n * c.heads * c.d, 1.0);
    let k = rand_stored(&mut r, c.dtype, elems, 0);
    let v = rand_stored(&mut r, c.dtype, elems, 0);
    let vmax = (0..elems)
        .map(|i| load_f32(&v, c.dtype, i).abs())
        .fold(0.0, f32::max);
    Data {
        q,
        k,
        v,
        layout,
        vmax,
    }
}

/// The task of case `c` over `d` with softmax scale `scale`, writing `out`.
fn task<'a>(c: &Case, d: &'a Data, scale: f32, out: &'a mut [f32]) -> AttnTask<'a> {
    AttnTask {
        q: &d.q,
        k: KvView {
            dtype: c.dtype,
            data: &d.k,
            layout: d.layout,
        },
        v: KvView {
            dtype: c.dtype,
            data: &d.v,
            layout: d.layout,
        },
        shape: AttnShape {
            n_queries: c.n,
            n_heads: c.heads,
            kv_len: c.kv_len,
            scale,
        },
        out,
    }
}

/// Output `[n, heads, d]` of `kernel` on the task of `c` over `d`.
fn call(c: &Case, d: &Data, kernel: impl FnOnce(&mut AttnTask<'_>)) -> Vec<f32> {
    let mut out = vec![f32::NAN; d.q.len()];
    kernel(&mut task(c, d, 1.0 / (c.d as f32).sqrt(), &mut out));
    out
}

fn run(isa: Isa, c: &Case, d: &Data) -> Vec<f32> {
    call(c, d, |t| attention_verify_with(isa, t))
}

fn reference(c: &Case, d: &Data) -> Vec<f32> {
    call(c, d, attention_scalar)
}

fn check(c: &Case, seed: u64) {
    let data = make(c, seed);
    let want = reference(c, &data);
    for isa in paths() {
        let got = run(isa, c, &data);
        let tol = 2e-5 * data.vmax + 1e-6;
        for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= tol,
                "{isa} n={} kv_len={} heads={}/{} d={} {} head_major={}: out[{idx}] = {g}, \
                 reference {w} (tol {tol:e})",
                c.n,
                c.kv_len,
                c.heads,
                c.kv_heads,
                c.d,
                c.dtype,
                c.head_major
            );
        }
    }
}

#[test]
fn decode_verify_and_prefill_every_dtype_group_and_head_dim() {
    let mut seed = 0;
    for dtype in DTYPES {
        for &(heads, kv_heads) in &[(4, 4), (4, 2), (8, 2), (8, 1)] {
            for &d in &[64, 40, 7] {
                for &(n, kv_len) in &[(1, 1), (1, 70), (3, 3), (5, 130), (8, 200), (17, 17)] {
                    seed += 1;
                    let c = Case {
                        n,
                        kv_len,
                        heads,
                        kv_heads,
                        d,
                        dtype,
                        head_major: seed % 2 == 0,
                    };
                    check(&c, seed);
                }
            }
        }
    }
}

#[test]
fn long_kv_head_dim_128() {
    // Both layouts: a token-major cache is read in place (f32) or widened chunk by chunk,
    // with the next chunk prefetched meanwhile, over many chunks (every case but the
    // 700-position 2-byte one is above the 1 MiB per-sequence prefetch threshold).
    for dtype in DTYPES {
        for &(n, kv_len, head_major) in &[
            (1, 1100, true),
            (8, 1500, true),
            (4, 1027, false),
            (8, 700, false),
        ] {
            let c = Case {
                n,
                kv_len,
                heads: 8,
                kv_heads: 2,
                d: 128,
                dtype,
                head_major,
            };
            check(&c, 77 + n as u64);
        }
    }
}

#[test]
fn prefill_longer_than_a_query_block() {
    // n · group > 64 query rows: several work items per KV head, causal skip per block.
    for dtype in [DType::F32, DType::BF16] {
        let c = Case {
            n: 150,
            kv_len: 150,
            heads: 4,
            kv_heads: 2,
            d: 64,
            dtype,
            head_major: false,
        };
        check(&c, 5);
        let c = Case {
            n: 40,
            kv_len: 1040,
            heads: 16,
            kv_heads: 2,
            d: 40,
            dtype,
            head_major: true,
        };
        check(&c, 6);
    }
}

#[test]
fn batch_of_sequences_matches_one_by_one() {
    let cases = [
        Case {
            n: 1,
            kv_len: 90,
            heads: 8,
            kv_heads: 2,
            d: 64,
            dtype: DType::F16,
            head_major: true,
        },
        Case {
            n: 6,
            kv_len: 300,
            heads: 8,
            kv_heads: 2,
            d: 64,
            dtype: DType::F16,
            head_major: false,
        },
        Case {
            n: 0,
            kv_len: 0,
            heads: 8,
            kv_heads: 2,
            d: 64,
            dtype: DType::F16,
            head_major: true,
        },
    ];
    let data: Vec<Data> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| make(c, 40 + i as u64))
        .collect();
    for isa in paths() {
        let mut outs: Vec<Vec<f32>> = data.iter().map(|d| vec![f32::NAN; d.q.len()]).collect();
        let mut tasks: Vec<AttnTask<'_>> = cases
            .iter()
            .zip(&data)
            .zip(outs.iter_mut())
            .map(|((c, d), out)| task(c, d, 0.125, out))
            .collect();
        attention_verify_batch_with(isa, &mut tasks);
        drop(tasks);
        for (c, (d, out)) in cases.iter().zip(data.iter().zip(&outs)) {
            let mut want = vec![0.0; d.q.len()];
            attention_scalar(&mut task(c, d, 0.125, &mut want));
            for (g, w) in out.iter().zip(&want) {
                assert!((g - w).abs() <= 2e-5 * d.vmax + 1e-6, "{isa}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn plain_entry_and_unsupported_paths() {
    let c = Case {
        n: 3,
        kv_len: 67,
        heads: 4,
        kv_heads: 1,
        d: 32,
        dtype: DType::BF16,
        head_major: true,
    };
    let data = make(&c, 9);
    let want = reference(&c, &data);
    let mut isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| !i.is_supported()).collect();
    isas.push(specmoe_cpu_kernels::dispatch::active());
    for isa in isas {
        let got = run(isa, &c, &data);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 2e-5 * data.vmax + 1e-6,
                "{isa}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn extreme_scores_stay_finite() {
    // Large scores: the online max must keep exp in range (no inf/NaN).
    let c = Case {
        n: 4,
        kv_len: 200,
        heads: 2,
        kv_heads: 1,
        d: 16,
        dtype: DType::F32,
        head_major: true,
    };
    let mut data = make(&c, 12);
    for q in data.q.iter_mut() {
        *q *= 400.0;
    }
    let want = reference(&c, &data);
    for isa in paths() {
        let got = run(isa, &c, &data);
        for (g, w) in got.iter().zip(&want) {
            assert!(g.is_finite());
            assert!((g - w).abs() <= 1e-3 * data.vmax, "{isa}: {g} vs {w}");
        }
    }
}

#[test]
#[should_panic(expected = "heads must be a multiple of kv_heads")]
fn bad_group_panics() {
    let c = Case {
        n: 1,
        kv_len: 4,
        heads: 3,
        kv_heads: 2,
        d: 8,
        dtype: DType::F32,
        head_major: true,
    };
    let data = make(&c, 1);
    run(Isa::Scalar, &c, &data);
}

#[test]
fn verification_rows_equal_single_token_calls_bitwise() {
    // Batch invariance: query i of an n-token call equals a 1-token call at position l + i
    // on the same KV, bit for bit, on every path — whichever form (broadcast or small) and
    // chunk lengths each call uses. Covers n across the small/broadcast switch and prefill.
    let mut seed = 500;
    for dtype in DTYPES {
        for &(heads, kv_heads, d) in &[(8, 4, 64), (4, 2, 32), (32, 8, 128), (6, 2, 40), (4, 4, 7)]
        {
            for &(l, n) in &[(0, 3), (16, 5), (29, 8), (61, 2), (100, 20), (0, 70)] {
                seed += 1;
                let c = Case {
                    n,
                    kv_len: l + n,
                    heads,
                    kv_heads,
                    d,
                    dtype,
                    head_major: seed % 2 == 0,
                };
                let data = make(&c, seed);
                let row = heads * d;
                for isa in paths() {
                    let all = run(isa, &c, &data);
                    for i in 0..n {
                        let one = Case {
                            n: 1,
                            kv_len: l + i + 1,
                            ..c
                        };
                        let single = Data {
                            q: data.q[i * row..(i + 1) * row].to_vec(),
                            k: data.k.clone(),
                            v: data.v.clone(),
                            ..data
                        };
                        let got = run(isa, &one, &single);
                        for (j, (a, b)) in all[i * row..(i + 1) * row].iter().zip(&got).enumerate()
                        {
                            assert!(
                                a.to_bits() == b.to_bits(),
                                "{isa} {dtype} heads {heads}/{kv_heads} d={d} l={l} n={n}: \
                                 query {i} elem {j}: {a} in the n-token call, {b} alone"
                            );
                        }
                    }
                }
            }
        }
    }
}
