//! Time of one matmul call against the number of tokens, for bf16 weight matrices:
//! `cargo run --release -p specmoe-cpu-kernels --example token_scaling -- [ROWSxCOLS ...]`
//! (default: the shapes of the bundled models and a Mixtral expert; plain `ROWS COLS` also
//! works). Shows how much a verification block of `k+1` tokens costs relative to one token.
//!
//! Each (shape, token count) is timed in `ROUNDS` rounds (env, default 5) of single calls,
//! token counts interleaved within a round so that a noisy neighbour hits them alike; the
//! minimum over all calls is reported. `TOKENS=1,2,4` (env) chooses the token counts. Runs on the current rayon pool
//! (`RAYON_NUM_THREADS=1` for one thread).

use specmoe_cpu_kernels::matmul::{matmul, WeightMatrix};
use specmoe_cpu_kernels::DType;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut shapes: Vec<(usize, usize)> = args
        .iter()
        .filter_map(|a| {
            let (r, c) = a.split_once('x')?;
            Some((r.parse().ok()?, c.parse().ok()?))
        })
        .collect();
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if let [r, c] = nums[..] {
        shapes.push((r, c));
    }
    if shapes.is_empty() {
        shapes = vec![
            (512, 512),
            (4096, 512),
            (512, 128),
            (4096, 128),
            (128, 512),
            (14336, 4096),
        ];
    }
    let tokens: Vec<usize> = std::env::var("TOKENS")
        .ok()
        .map(|s| s.split(',').filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 64]);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    for (rows, cols) in shapes {
        let data: Vec<u8> = (0..rows * cols)
            .flat_map(|i| {
                half::bf16::from_f32(((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1).to_le_bytes()
            })
            .collect();
        let w = WeightMatrix::new(DType::BF16, rows, cols, &data);
        // ~20 ms of one-token work per round.
        let reps = (4e7 / (rows * cols) as f64).clamp(3.0, 20000.0) as usize;
        let mut best = vec![f64::MAX; tokens.len()];
        for _ in 0..rounds {
            for (j, &n) in tokens.iter().enumerate() {
                let x = vec![0.01f32; n * cols];
                let mut out = vec![0.0f32; n * rows];
                matmul(&x, n, &w, &mut out);
                // Each call timed on its own: the minimum ignores preemption by neighbours.
                let r = if n > 16 { reps.div_ceil(4) } else { reps };
                for _ in 0..r {
                    let t = Instant::now();
                    matmul(&x, n, &w, &mut out);
                    best[j] = best[j].min(t.elapsed().as_secs_f64());
                }
            }
        }
        let base = best[tokens.iter().position(|&n| n == 1).unwrap_or(0)];
        print!("{rows}x{cols}: t1 {:9.2} us |", base * 1e6);
        for (j, &n) in tokens.iter().enumerate() {
            if n != 1 {
                print!(" {n}:{:.2}", best[j] / base);
            }
        }
        println!();
    }
}
