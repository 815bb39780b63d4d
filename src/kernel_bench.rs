//! `specmoe bench kernels`: this machine's ceilings (DRAM read bandwidth, FMA throughput
//! per path) and the named CPU kernels of issue #3 measured against them — the roofline
//! inputs of DESIGN.md ("Facts measured on these machines", "The figures we hold ourselves
//! to": memory-bound kernels ≥ 90 % of DRAM bandwidth; `k + 1 = 8` verification attention
//! ≤ 1.3 × one decode pass).
//!
//! Measuring helpers live in `specmoe_cpu_kernels::ceiling`, the problems in
//! `specmoe_cpu_kernels::workloads`.

use serde::Serialize;
use specmoe_cpu_kernels::ceiling::{
    bandwidth_buffer, dram_read_gbps, fma_peak_gflops, time_median,
};
use specmoe_cpu_kernels::workloads::Workload;
use specmoe_cpu_kernels::{dispatch, Isa};

/// DRAM read bandwidth at one thread count.
#[derive(Debug, Clone, Serialize)]
pub struct Bandwidth {
    /// Threads reading disjoint parts of the buffer.
    pub threads: usize,
    /// GB/s (1e9 bytes per second), best of the repetitions.
    pub gbps: f64,
}

/// FMA throughput of one path at one thread count.
#[derive(Debug, Clone, Serialize)]
pub struct FmaPeak {
    /// Path name (`avx512`, `avx2`, `neon`, `scalar`).
    pub path: String,
    /// Threads, each running independent FMA chains.
    pub threads: usize,
    /// f32 GFLOP/s (an FMA counts 2 per lane), best of 3.
    pub gflops: f64,
}

/// The machine's measured ceilings.
#[derive(Debug, Clone, Serialize)]
pub struct Ceilings {
    /// DRAM read bandwidth for 1..=N threads.
    pub dram_read: Vec<Bandwidth>,
    /// FMA peak per supported path for 1..=N threads.
    pub fma: Vec<FmaPeak>,
    /// Size of the bandwidth buffer in bytes (≫ last-level cache).
    pub buffer_bytes: usize,
}

impl Ceilings {
    /// DRAM GB/s at `threads` (the largest measured count not above it).
    pub fn dram_gbps(&self, threads: usize) -> f64 {
        self.dram_read
            .iter()
            .rfind(|b| b.threads <= threads)
            .map_or(f64::NAN, |b| b.gbps)
    }

    /// FMA GFLOP/s of `path` at `threads`.
    pub fn fma_gflops(&self, path: &str, threads: usize) -> f64 {
        self.fma
            .iter()
            .rfind(|f| f.path == path && f.threads <= threads)
            .map_or(f64::NAN, |f| f.gflops)
    }
}

/// One named kernel, timed.
#[derive(Debug, Clone, Serialize)]
pub struct KernelResult {
    /// `matmul_bf16_t1`, `matmul_bf16_t8`, `matmul_bf16_t64`, `attn_verify_n1_l2048`,
    /// `attn_verify_n8_l2048`, and the `_bf16` / `_f16` KV variants of the attention.
    pub name: String,
    /// Path it ran on.
    pub path: String,
    /// Threads of the rayon pool it ran in.
    pub threads: usize,
    /// Problem shape in words.
    pub shape: String,
    /// Median seconds per call.
    pub seconds: f64,
    /// Minimum bytes moved (weights / KV read once, activations, outputs) per second, 1e9.
    pub gbps: f64,
    /// Floating-point operations per second, 1e9.
    pub gflops: f64,
    /// `"memory"` or `"compute"`: whichever roofline time (bytes / DRAM bandwidth or
    /// flops / FMA peak, at this thread count and path) is larger.
    pub bound: String,
    /// Achieved share of the binding ceiling (`gbps / dram` or `gflops / fma peak`).
    pub share_of_ceiling: f64,
}

/// Ceilings and kernel timings.
#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    /// Measured ceilings.
    pub ceilings: Ceilings,
    /// The named kernels on the active path.
    pub kernels: Vec<KernelResult>,
}

/// Measures the ceilings (1..=N threads, N = `threads` or all cores) and times every named
/// kernel on the active path ([`dispatch::active`]) with N threads.
///
/// `quick`: a 256 MiB bandwidth buffer instead of 1 GiB, shorter FMA runs, 3 repetitions
/// instead of 7, 4 attention sequences instead of 8 — a few seconds instead of tens.
pub fn run(threads: Option<usize>, quick: bool) -> KernelReport {
    run_with(dispatch::active(), threads, quick)
}

/// [`run`] on an explicit path (the portable path if this CPU lacks it).
pub fn run_with(isa: Isa, threads: Option<usize>, quick: bool) -> KernelReport {
    let isa = dispatch::usable(isa);
    let n = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let buffer_bytes = if quick { 256 << 20 } else { 1 << 30 };
    let reps = if quick { 3 } else { 7 };
    let fma_seconds = if quick { 0.1 } else { 0.3 };

    let dram_read = {
        let buf = bandwidth_buffer(buffer_bytes);
        (1..=n)
            .map(|t| Bandwidth {
                threads: t,
                gbps: dram_read_gbps(&buf, t, 3),
            })
            .collect()
    };
    let mut fma = Vec::new();
    for path in Isa::supported() {
        for t in 1..=n {
            fma.push(FmaPeak {
                path: path.name().to_string(),
                threads: t,
                gflops: fma_peak_gflops(path, t, fma_seconds),
            });
        }
    }
    let ceilings = Ceilings {
        dram_read,
        fma,
        buffer_bytes,
    };

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .expect("kernel bench: cannot build the thread pool");
    let bw = ceilings.dram_gbps(n);
    let peak = ceilings.fma_gflops(isa.name(), n);
    let kernels = Workload::named(if quick { 4 } else { 8 })
        .into_iter()
        .map(|w| {
            let mut p = w.prepare();
            let seconds = pool.install(|| time_median(reps, || p.run(isa)));
            drop(p);
            let (bytes, flops) = (w.bytes(), w.flops());
            let gbps = bytes / seconds / 1e9;
            let gflops = flops / seconds / 1e9;
            let memory = bytes / bw >= flops / peak;
            KernelResult {
                name: w.name.clone(),
                path: isa.name().to_string(),
                threads: n,
                shape: w.shape(),
                seconds,
                gbps,
                gflops,
                bound: if memory { "memory" } else { "compute" }.to_string(),
                share_of_ceiling: if memory { gbps / bw } else { gflops / peak },
            }
        })
        .collect();
    KernelReport { ceilings, kernels }
}

impl KernelReport {
    /// The report as a plain-text table (ceilings, then one line per kernel).
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let c = &self.ceilings;
        let _ = writeln!(s, "ceilings (buffer {} MiB):", c.buffer_bytes >> 20);
        for b in &c.dram_read {
            let _ = writeln!(
                s,
                "  DRAM read   {:>2} thread(s) {:>8.2} GB/s",
                b.threads, b.gbps
            );
        }
        for f in &c.fma {
            let _ = writeln!(
                s,
                "  FMA {:<7} {:>2} thread(s) {:>8.1} GFLOP/s",
                f.path, f.threads, f.gflops
            );
        }
        let _ = writeln!(
            s,
            "\n{:<28} {:<7} {:>3} {:>10} {:>8} {:>9} {:>8} {:>6}  shape",
            "kernel", "path", "thr", "ms", "GB/s", "GFLOP/s", "bound", "share"
        );
        for k in &self.kernels {
            let _ = writeln!(
                s,
                "{:<28} {:<7} {:>3} {:>10.3} {:>8.2} {:>9.1} {:>8} {:>5.1}%  {}",
                k.name,
                k.path,
                k.threads,
                k.seconds * 1e3,
                k.gbps,
                k.gflops,
                k.bound,
                100.0 * k.share_of_ceiling,
                k.shape
            );
        }
        s
    }
}
