//! Prints this path's FMA peak, the DRAM bandwidth and the named kernels' timings (median
//! and best of `REPS`, default 7) for one path and thread count, e.g.
//! `cargo run --release -p specmoe-cpu-kernels --example kernel_report -- avx512 2 [filter]`.
//! `BW=<GB/s>` skips the 1 GiB bandwidth measurement. The report of record is
//! `specmoe bench kernels` (`src/kernel_bench.rs`); this is a quicker tool for one path.
use specmoe_cpu_kernels::ceiling::*;
use specmoe_cpu_kernels::workloads::Workload;
use specmoe_cpu_kernels::Isa;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let isa = Isa::parse(a.get(1).map(|s| s.as_str()).unwrap_or("avx512")).unwrap();
    let threads: usize = a.get(2).map(|s| s.parse().unwrap()).unwrap_or(1);
    let filter = a.get(3).cloned().unwrap_or_default();
    let reps: usize = std::env::var("REPS")
        .map(|v| v.parse().unwrap())
        .unwrap_or(7);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let peak = fma_peak_gflops(isa, threads, 0.3);
    let bw = if std::env::var("BW").is_ok() {
        std::env::var("BW").unwrap().parse().unwrap()
    } else {
        dram_read_gbps(&bandwidth_buffer(1 << 30), threads, 3)
    };
    println!("{isa} threads={threads}: FMA peak {peak:.1} GFLOP/s, DRAM {bw:.2} GB/s");
    for w in Workload::named(8) {
        if !w.name.contains(&filter) {
            continue;
        }
        let mut p = w.prepare();
        let s = pool.install(|| time_median(reps, || p.run(isa)));
        let mut ts = vec![];
        pool.install(|| {
            for _ in 0..reps {
                let t = std::time::Instant::now();
                p.run(isa);
                ts.push(t.elapsed().as_secs_f64());
            }
        });
        let best = ts.iter().copied().fold(f64::MAX, f64::min);
        println!(
            "{:<28} {:>9.3} ms (best {:>8.3})  {:>7.2} GB/s {:>7.1} GFLOP/s  mem {:>5.1}% fma {:>5.1}%",
            w.name, s * 1e3, best * 1e3, w.bytes() / s / 1e9, w.flops() / s / 1e9,
            100.0 * w.bytes() / s / 1e9 / bw, 100.0 * w.flops() / s / 1e9 / peak
        );
    }
}
