//! Measured ceilings of this machine: DRAM read bandwidth and FMA throughput, per path
//! and thread count (the inputs of the roofline model, DESIGN.md "Facts measured").
//!
//! These functions take wall-clock measurements; on a shared machine they are noisy, so
//! each returns the best or median of several repetitions as documented.

use crate::dispatch::{usable, Isa};
use crate::simd::{isa_entry, Simd};
use std::sync::Barrier;
use std::time::Instant;

/// Independent FMA chains per thread: ≥ latency × ports on every path (4 × 2 on x86).
const CHAINS: usize = 12;

#[inline(always)]
unsafe fn fma_loop<S: Simd>(iters: usize, seed: f32) -> f32 {
    let mut acc = [S::splat(seed); CHAINS];
    let a = S::splat(0.999_999);
    let b = S::splat(1e-7);
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = S::fma(*v, a, b);
        }
    }
    let mut s = S::zero();
    for v in acc {
        s = S::add(s, v);
    }
    S::hsum(s)
}

isa_entry!(fn fma_run => fma_loop(iters: usize, seed: f32) -> f32);

/// f32 FLOP/s of `isa`'s FMA (2 flops per lane per FMA) with `threads` threads each
/// running `CHAINS` independent FMA chains for about `seconds` in total; the best of 3.
///
/// Returns GFLOP/s summed over threads. `isa` falls back to the portable path if the CPU
/// lacks it (as every `*_with` entry does).
pub fn fma_peak_gflops(isa: Isa, threads: usize, seconds: f64) -> f64 {
    let isa = usable(isa);
    let threads = threads.max(1);
    let lanes = crate::simd::lanes(isa);
    // Calibrate the iteration count on one thread.
    let mut iters = 1 << 16;
    loop {
        let t = Instant::now();
        // SAFETY: no pointers are involved; the path is usable.
        std::hint::black_box(unsafe { fma_run(isa, iters, 1.0) });
        let s = t.elapsed().as_secs_f64();
        if s > 0.01 || iters > 1 << 30 {
            iters = ((iters as f64) * (seconds / 3.0) / s).max(1.0) as usize;
            break;
        }
        iters *= 4;
    }
    let mut best = 0.0f64;
    for _ in 0..3 {
        let barrier = Barrier::new(threads);
        let secs: Vec<f64> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..threads)
                .map(|i| {
                    let barrier = &barrier;
                    sc.spawn(move || {
                        barrier.wait();
                        let t = Instant::now();
                        // SAFETY: no pointers are involved; the path is usable.
                        std::hint::black_box(unsafe { fma_run(isa, iters, 1.0 + i as f32) });
                        t.elapsed().as_secs_f64()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let slowest = secs.iter().copied().fold(0.0, f64::max);
        let flops = 2.0 * (lanes * CHAINS * iters * threads) as f64;
        best = best.max(flops / slowest / 1e9);
    }
    best
}

#[inline(always)]
unsafe fn sum_generic<S: Simd>(p: *const f32, n: usize) -> f32 {
    let mut acc = [S::zero(); 8];
    let mut i = 0;
    while i + 8 * S::L <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = S::add(*a, S::load(p.add(i + j * S::L)));
        }
        i += 8 * S::L;
    }
    let mut s = S::zero();
    for a in acc {
        s = S::add(s, a);
    }
    let mut tail = 0.0;
    while i < n {
        tail += *p.add(i);
        i += 1;
    }
    S::hsum(s) + tail
}

isa_entry!(fn sum_run => sum_generic(p: *const f32, n: usize) -> f32);

/// Sum of `x` with the vector loads of `isa` (the read loop of [`dram_read_gbps`]).
pub fn sum_f32_with(isa: Isa, x: &[f32]) -> f32 {
    // SAFETY: reads exactly `x.len()` f32 from `x`.
    unsafe { sum_run(isa, x.as_ptr(), x.len()) }
}

/// A buffer for [`dram_read_gbps`]: `bytes` (rounded down to f32) of non-zero data, so
/// every page is really backed by memory.
pub fn bandwidth_buffer(bytes: usize) -> Vec<f32> {
    let n = bytes / 4;
    let mut v = vec![0.0f32; n];
    for (i, x) in v.iter_mut().enumerate().step_by(1024) {
        *x = (i % 7) as f32;
    }
    v
}

/// DRAM read bandwidth in GB/s (1e9 bytes/s): `threads` threads each sum a disjoint
/// `1/threads` of `buf` with [`sum_f32_with`] on the detected path, started together;
/// bytes / the slowest thread's time, best of `reps` (≥ 1).
///
/// `buf` must be much larger than the last-level cache (e.g. 1 GiB; see
/// [`bandwidth_buffer`]) or this measures the cache instead.
pub fn dram_read_gbps(buf: &[f32], threads: usize, reps: usize) -> f64 {
    let threads = threads.max(1);
    let isa = crate::dispatch::detect();
    let chunk = buf.len() / threads;
    let mut best = 0.0f64;
    for _ in 0..reps.max(1) {
        let barrier = Barrier::new(threads);
        let secs: Vec<f64> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..threads)
                .map(|i| {
                    let part = &buf[i * chunk..(i + 1) * chunk];
                    let barrier = &barrier;
                    sc.spawn(move || {
                        barrier.wait();
                        let t = Instant::now();
                        std::hint::black_box(sum_f32_with(isa, part));
                        t.elapsed().as_secs_f64()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let slowest = secs.iter().copied().fold(0.0, f64::max);
        best = best.max((chunk * threads * 4) as f64 / slowest / 1e9);
    }
    best
}

/// Median of `reps` (≥ 1) timings of `f`, in seconds, after one untimed warm-up call.
pub fn time_median<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    let mut ts: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(|a, b| a.total_cmp(b));
    let n = ts.len();
    if n % 2 == 1 {
        ts[n / 2]
    } else {
        0.5 * (ts[n / 2 - 1] + ts[n / 2])
    }
}
