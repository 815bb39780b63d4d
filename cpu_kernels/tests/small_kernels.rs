//! Conformance of the small kernels on every supported path against the scalar path
//! (the reference), with ragged lengths around every vector width.
//!
//! Tolerances (relative to the magnitude of each result element):
//! - RMSNorm: `|got − ref| ≤ 2e-6 · |ref| + 1e-30` (only the sum of squares is reordered);
//! - SiLU·mul and softmax: `≤ 2e-6 · |ref| + 1e-30` (polynomial `exp`, ≤ 2 ulp);
//! - RoPE: bit-identical (same scalar cos/sin, no FMA contraction).

mod common;
use common::*;
use specmoe_cpu_kernels::activation::{silu_mul_inplace, silu_mul_inplace_with};
use specmoe_cpu_kernels::dtype::{load_f32, store_f32, store_f32_slice, to_f32_slice};
use specmoe_cpu_kernels::norm::{rms_norm, rms_norm_inplace_with, rms_norm_with};
use specmoe_cpu_kernels::rope::{rope_apply, rope_inplace, rope_inplace_with, RopeTable};
use specmoe_cpu_kernels::select::{argmax, softmax_inplace, softmax_inplace_with, top_k};
use specmoe_cpu_kernels::{DType, Isa};

const LENS: [usize; 14] = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 100, 4096];

fn close(isa: Isa, what: &str, got: &[f32], want: &[f32], rel: f32) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= rel * w.abs() + 1e-30 || (g.is_nan() && w.is_nan());
        assert!(ok, "{isa} {what}: [{i}] = {g}, reference {w}");
    }
}

#[test]
fn rms_norm_matches_scalar() {
    let mut r = rng(1);
    for &dim in &LENS {
        let w = rand_f32(&mut r, dim, 2.0);
        let x = rand_f32(&mut r, 3 * dim, 5.0);
        let mut want = x.clone();
        rms_norm_inplace_with(Isa::Scalar, &mut want, &w, 1e-6);
        for isa in paths() {
            let mut got = x.clone();
            rms_norm_inplace_with(isa, &mut got, &w, 1e-6);
            close(isa, &format!("rms_norm dim={dim}"), &got, &want, 2e-6);
            let mut out = vec![0.0; x.len()];
            rms_norm_with(isa, &x, &w, 1e-6, &mut out);
            close(isa, "rms_norm (copy)", &out, &want, 2e-6);
        }
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &w, 1e-6, &mut out);
        close(Isa::Scalar, "rms_norm (active)", &out, &want, 2e-6);
    }
}

#[test]
#[should_panic(expected = "rms_norm: x must be")]
fn rms_norm_bad_shape_panics() {
    let mut x = vec![0.0; 5];
    rms_norm_inplace_with(Isa::Scalar, &mut x, &[1.0, 1.0], 1e-6);
}

#[test]
fn silu_mul_matches_scalar_including_extremes() {
    let mut r = rng(2);
    for &n in &LENS {
        let mut gate = rand_f32(&mut r, n, 12.0);
        let up = rand_f32(&mut r, n, 3.0);
        if n > 4 {
            gate[0] = -100.0;
            gate[1] = 100.0;
            gate[2] = 0.0;
            gate[3] = -87.5;
        }
        let mut want = gate.clone();
        silu_mul_inplace_with(Isa::Scalar, &mut want, &up);
        for isa in paths() {
            let mut got = gate.clone();
            silu_mul_inplace_with(isa, &mut got, &up);
            close(isa, &format!("silu_mul n={n}"), &got, &want, 2e-6);
        }
        let mut got = gate.clone();
        silu_mul_inplace(&mut got, &up);
        close(Isa::Scalar, "silu_mul (active)", &got, &want, 2e-6);
    }
}

#[test]
fn softmax_matches_scalar() {
    let mut r = rng(3);
    for &n in &LENS {
        for scale in [1.0, 30.0] {
            let mut x = rand_f32(&mut r, n, scale);
            if n > 3 {
                x[1] = f32::NEG_INFINITY;
            }
            let mut want = x.clone();
            softmax_inplace_with(Isa::Scalar, &mut want);
            for isa in paths() {
                let mut got = x.clone();
                softmax_inplace_with(isa, &mut got);
                close(isa, &format!("softmax n={n}"), &got, &want, 2e-6);
                let s: f32 = got.iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{isa}: softmax sums to {s}");
            }
            let mut got = x.clone();
            softmax_inplace(&mut got);
            close(Isa::Scalar, "softmax (active)", &got, &want, 2e-6);
        }
    }
    // All −∞ and empty rows are left unchanged on every path.
    for isa in paths() {
        let mut x = vec![f32::NEG_INFINITY; 19];
        softmax_inplace_with(isa, &mut x);
        assert!(x.iter().all(|v| *v == f32::NEG_INFINITY));
        softmax_inplace_with(isa, &mut []);
    }
}

#[test]
fn rope_is_bit_identical_on_every_path() {
    let mut r = rng(4);
    for &half in &[1usize, 3, 4, 8, 20, 32, 64] {
        let inv_freq: Vec<f32> = (0..half)
            .map(|j| 10000f32.powf(-(j as f32) / half as f32))
            .collect();
        let positions = [0usize, 1, 17, 4095];
        let heads = 3;
        let x = rand_f32(&mut r, positions.len() * heads * 2 * half, 2.0);
        let mut want = x.clone();
        rope_inplace_with(Isa::Scalar, &mut want, heads, &positions, &inv_freq, 1.0);
        for isa in paths() {
            let mut got = x.clone();
            rope_inplace_with(isa, &mut got, heads, &positions, &inv_freq, 1.0);
            assert_eq!(got, want, "{isa} rope half={half}");
        }
        let mut got = x.clone();
        rope_inplace(&mut got, heads, &positions, &inv_freq, 1.0);
        assert_eq!(got, want);
    }
}

#[test]
fn rope_table_rows_rotate_like_their_positions() {
    let mut r = rng(5);
    let half = 8;
    let heads = 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|j| 10000f32.powf(-(j as f32) / half as f32))
        .collect();
    let table = RopeTable::new(&[5, 9, 300, 301], &inv_freq, 1.0);
    assert_eq!(table.len(), 4);
    let x = rand_f32(&mut r, 2 * heads * 2 * half, 1.0);
    // Rows 2..4 of the table are positions 300 and 301.
    let mut got = x.clone();
    rope_apply(&mut got, heads, &table, 2);
    let mut want = x.clone();
    rope_inplace(&mut want, heads, &[300, 301], &inv_freq, 1.0);
    assert_eq!(got, want);
    // Against the formula itself (token 1, head 1, frequency 3).
    let (i, h, j) = (1usize, 1usize, 3usize);
    let base = (i * heads + h) * 2 * half;
    let theta = 301f32 * inv_freq[j];
    let (a, b) = (x[base + j], x[base + j + half]);
    assert_eq!(got[base + j], a * theta.cos() - b * theta.sin());
    assert_eq!(got[base + j + half], b * theta.cos() + a * theta.sin());
}

#[test]
#[should_panic(expected = "too few positions")]
fn rope_table_too_short_panics() {
    let table = RopeTable::new(&[0], &[1.0, 0.5], 1.0);
    let mut x = vec![0.0f32; 2 * 4];
    rope_apply(&mut x, 1, &table, 0);
}

#[test]
fn dtype_slice_conversions_match_the_element_ones() {
    let mut r = rng(6);
    let v = rand_f32(&mut r, 37, 3.0);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let mut a = vec![0u8; (v.len() + 3) * dt.size()];
        let mut b = a.clone();
        store_f32_slice(&mut a, dt, 3, &v);
        for (i, &x) in v.iter().enumerate() {
            store_f32(&mut b, dt, 3 + i, x);
        }
        assert_eq!(a, b, "{dt} store");
        let mut back = vec![0.0f32; v.len()];
        to_f32_slice(&a, dt, 3, &mut back);
        for (i, &g) in back.iter().enumerate() {
            assert_eq!(
                g.to_bits(),
                load_f32(&a, dt, 3 + i).to_bits(),
                "{dt} load {i}"
            );
        }
    }
}

#[test]
fn top_k_and_argmax_break_ties_toward_the_lower_index() {
    assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    assert_eq!(argmax(&[f32::NAN, 1.0, 1.0]), 1);
    assert_eq!(argmax(&[]), 0);
    assert_eq!(argmax(&[f32::NAN; 40]), 0);
    assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
    // Against the one-pass scan on ragged lengths with many ties and NaNs (values drawn
    // from a small set, so the maximum repeats, in the vector body and in the tail).
    let mut r = rng(9);
    for n in [1usize, 15, 16, 17, 33, 4096, 4099] {
        for _ in 0..20 {
            let x: Vec<f32> = rand_f32(&mut r, n, 4.0)
                .iter()
                .map(|v| if *v > 3.5 { f32::NAN } else { v.round() })
                .collect();
            let mut want = 0;
            let mut bv = f32::NEG_INFINITY;
            for (i, &v) in x.iter().enumerate() {
                if v > bv {
                    bv = v;
                    want = i;
                }
            }
            assert_eq!(argmax(&x), want, "n={n} {x:?}");
        }
    }
    let x = [0.5, 2.0, 1.0, 2.0, 1.0, 0.5];
    assert_eq!(top_k(&x, 3), vec![(1, 2.0), (3, 2.0), (2, 1.0)]);
    assert_eq!(top_k(&x, 0), vec![]);
    assert_eq!(top_k(&x[..2], 5).len(), 2);
}
