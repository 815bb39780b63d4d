//! Time of one attention call (one sequence, f32 head-major KV as the model's `KvCache`,
//! 1 thread) against the number of new tokens `n`, for the bundled pair's small heads:
//! `cargo run --release -p specmoe-cpu-kernels --example attn_scaling -- [isa]`.
//!
//! Shapes `(heads, kv_heads, d)` = (8, 4, 64) (target) and (4, 2, 32) (draft), earlier
//! positions `l` ∈ {16, 64, 256, 500}, `n` ∈ 1..=5. Prints the median and best time per
//! call (µs, over 7 rounds of ~5 ms each) and the median's ratio to `n = 1`. The KV stays
//! cache-resident, as in the model (a few hundred KB per layer).
use specmoe_cpu_kernels::attention::*;
use specmoe_cpu_kernels::{DType, Isa};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let isa = Isa::parse(a.get(1).map(|s| s.as_str()).unwrap_or("avx512")).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    println!("{isa}, 1 thread, f32 head-major KV; us per call: median (best)  median / n=1");
    for (heads, kvh, d) in [(8usize, 4usize, 64usize), (4, 2, 32)] {
        for l in [16usize, 64, 256, 500] {
            let mut line = format!("h{heads}/{kvh} d{d:<3} l{l:<3}:");
            let mut base = 0.0;
            for n in 1..=5usize {
                let kv_len = l + n;
                // KvCache grows by doubling from 16: capacity is above kv_len.
                let cap = kv_len.next_power_of_two().max(16);
                let layout = KvLayout::head_major(kvh, d, cap);
                let elems = kvh * cap * d;
                let gen = |i: usize, s: usize| (((i * s) % 1013) as f32 / 1013.0 - 0.5) * 0.5;
                let kb: Vec<u8> = (0..elems)
                    .flat_map(|i| gen(i, 7919).to_le_bytes())
                    .collect();
                let vb: Vec<u8> = (0..elems)
                    .flat_map(|i| gen(i, 104729).to_le_bytes())
                    .collect();
                let q: Vec<f32> = (0..n * heads * d).map(|i| gen(i, 31337)).collect();
                let mut out = vec![0.0f32; q.len()];
                let mut call = || {
                    let mut t = AttnTask {
                        q: &q,
                        k: KvView {
                            dtype: DType::F32,
                            data: &kb,
                            layout,
                        },
                        v: KvView {
                            dtype: DType::F32,
                            data: &vb,
                            layout,
                        },
                        shape: AttnShape {
                            n_queries: n,
                            n_heads: heads,
                            kv_len,
                            scale: 1.0 / (d as f32).sqrt(),
                        },
                        out: &mut out,
                    };
                    attention_verify_with(isa, &mut t);
                };
                let mut per_call = pool.install(|| {
                    for _ in 0..20 {
                        call();
                    }
                    let t = Instant::now();
                    let mut reps = 0usize;
                    while t.elapsed().as_secs_f64() < 0.005 {
                        call();
                        reps += 1;
                    }
                    let reps = reps.max(1);
                    (0..7)
                        .map(|_| {
                            let t = Instant::now();
                            for _ in 0..reps {
                                call();
                            }
                            t.elapsed().as_secs_f64() / reps as f64
                        })
                        .collect::<Vec<f64>>()
                });
                per_call.sort_by(f64::total_cmp);
                let (med, best) = (per_call[per_call.len() / 2], per_call[0]);
                if n == 1 {
                    base = med;
                }
                line += &format!(
                    "  n{n} {:6.2} ({:6.2}) {:4.2}x",
                    med * 1e6,
                    best * 1e6,
                    med / base
                );
            }
            println!("{line}");
        }
    }
}
