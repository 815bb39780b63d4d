//! Time of one matmul call against the number of tokens, for a weight matrix of the given
//! shape (bf16): `cargo run --release -p specmoe-cpu-kernels --example token_scaling -- 512 512`.
//! Shows how much a verification block of `k+1` tokens costs relative to one token.

use specmoe_cpu_kernels::matmul::{matmul, WeightMatrix};
use specmoe_cpu_kernels::DType;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (rows, cols) = (
        args.first().copied().unwrap_or(512),
        args.get(1).copied().unwrap_or(512),
    );
    let data: Vec<u8> = (0..rows * cols)
        .flat_map(|i| {
            half::bf16::from_f32(((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1).to_le_bytes()
        })
        .collect();
    let w = WeightMatrix::new(DType::BF16, rows, cols, &data);
    let mut base = 0.0;
    for tokens in [1usize, 2, 3, 4, 5, 8, 9, 16] {
        let x = vec![0.01f32; tokens * cols];
        let mut out = vec![0.0f32; tokens * rows];
        let reps = (2e8 / (rows * cols) as f64).max(10.0) as usize;
        for _ in 0..3 {
            matmul(&x, tokens, &w, &mut out);
        }
        let t = Instant::now();
        for _ in 0..reps {
            matmul(&x, tokens, &w, &mut out);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        if tokens == 1 {
            base = s;
        }
        println!(
            "{rows}x{cols} tokens {tokens:2}: {:8.2} us  ({:.2}x one token)",
            s * 1e6,
            s / base
        );
    }
}
