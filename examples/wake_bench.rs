//! What a parallel call costs after the pool's workers have been idle: the overhead
//! `parallel::keep_warm` removes during generation.
//!
//! `cargo run --release --example wake_bench [-- THREADS]` runs, on a pool of THREADS
//! (default 2) workers, a serial stretch of 0–320 µs followed by `rayon::join` of two 20 µs
//! halves, 2000 times per gap, and prints the median and 90th percentile of the join's time
//! beyond 20 µs — first with the other workers left to sleep, then inside `keep_warm`.

use specmoe_cpu_kernels::parallel::keep_warm;
use std::time::Instant;

fn spin(us: f64) {
    let t = Instant::now();
    while t.elapsed().as_secs_f64() * 1e6 < us {
        std::hint::spin_loop();
    }
}

fn rounds(label: &str) {
    for &gap in &[0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0] {
        let reps = 2000;
        let mut extra = Vec::with_capacity(reps);
        for _ in 0..reps {
            spin(gap);
            let t = Instant::now();
            rayon::join(|| spin(20.0), || spin(20.0));
            extra.push(t.elapsed().as_secs_f64() * 1e6 - 20.0);
        }
        extra.sort_by(f64::total_cmp);
        println!(
            "{label}: serial gap {gap:5.0} us: join overhead median {:.1} us, p90 {:.1} us",
            extra[reps / 2],
            extra[reps * 9 / 10]
        );
    }
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(|| {
        rounds("idle workers sleep");
        keep_warm(|| rounds("keep_warm"));
    });
}
