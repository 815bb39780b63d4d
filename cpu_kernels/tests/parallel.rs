//! `parallel::on_this_thread`: the flag it sets, its nesting and unwinding, and that kernels
//! run inside it give bitwise what they give when they fork. `parallel::keep_warm`: its
//! result, the work it lets other workers take, its fallbacks and its end on a panic.

mod common;
use common::*;
use specmoe_cpu_kernels::matmul::{matmul, WeightMatrix};
use specmoe_cpu_kernels::parallel::{keep_warm, may_fork, on_this_thread};
use specmoe_cpu_kernels::DType;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

#[test]
fn may_fork_follows_the_pool_and_the_pin() {
    assert!(!pool(1).install(may_fork), "a one-thread pool never forks");
    pool(2).install(|| {
        assert!(may_fork(), "two threads, not pinned");
        on_this_thread(|| {
            assert!(!may_fork(), "pinned");
            on_this_thread(|| assert!(!may_fork(), "nested pin"));
            assert!(!may_fork(), "still pinned after the nested call returned");
        });
        assert!(may_fork(), "the pin ends with the call");
        let r = std::panic::catch_unwind(|| on_this_thread(|| panic!("inside")));
        assert!(r.is_err());
        assert!(may_fork(), "the pin ends when the call unwinds");
    });
}

#[test]
fn pinned_matmul_is_bitwise_the_forked_one() {
    let mut r = rng(5);
    // 2100 × 70 bf16 = 294 KB: above the size that runs sequentially anyway.
    let (rows, cols) = (2100usize, 70usize);
    let data = rand_stored(&mut r, DType::BF16, rows * cols, 0);
    let w = WeightMatrix::new(DType::BF16, rows, cols, &data);
    for tokens in [1usize, 4, 9] {
        let x = rand_f32(&mut r, tokens * cols, 1.0);
        let (forked, pinned) = pool(2).install(|| {
            let mut a = vec![f32::NAN; tokens * rows];
            matmul(&x, tokens, &w, &mut a);
            let mut b = vec![f32::NAN; tokens * rows];
            on_this_thread(|| matmul(&x, tokens, &w, &mut b));
            (a, b)
        });
        assert!(
            forked
                .iter()
                .zip(&pinned)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "tokens={tokens}: pinned matmul differs"
        );
    }
}

/// Indices of the pool's workers that ran some of 256 parallel tasks of ≈ 0.2 ms each.
fn workers_used() -> std::collections::BTreeSet<usize> {
    use rayon::prelude::*;
    (0..256)
        .into_par_iter()
        .map(|_| {
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(200) {
                std::hint::spin_loop();
            }
            rayon::current_thread_index().expect("on a worker")
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect()
}

#[test]
fn keep_warm_returns_and_other_workers_still_take_work() {
    for threads in [2, 4] {
        pool(threads).install(|| {
            let (v, used) = keep_warm(|| (41 + 1, workers_used()));
            assert_eq!(v, 42);
            assert!(
                used.len() >= 2,
                "{threads} threads: the spinning workers must run queued tasks, used {used:?}"
            );
            // Several rounds in a row, and kernels inside give what they give outside.
            let mut r = rng(9);
            let (rows, cols) = (2100usize, 70usize);
            let data = rand_stored(&mut r, DType::BF16, rows * cols, 0);
            let w = WeightMatrix::new(DType::BF16, rows, cols, &data);
            let x = rand_f32(&mut r, 3 * cols, 1.0);
            let mut want = vec![0.0f32; 3 * rows];
            matmul(&x, 3, &w, &mut want);
            for _ in 0..3 {
                let got = keep_warm(|| {
                    let mut out = vec![0.0f32; 3 * rows];
                    matmul(&x, 3, &w, &mut out);
                    out
                });
                assert!(got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        });
    }
}

#[test]
fn keep_warm_outside_a_pool_or_alone_just_runs() {
    assert_eq!(keep_warm(|| 7), 7, "outside any pool");
    assert_eq!(pool(1).install(|| keep_warm(|| 8)), 8, "one thread");
}

#[test]
fn keep_warm_goes_on_when_the_other_worker_is_busy() {
    // The other worker is held by a task until released: the spinner cannot start, and
    // `keep_warm` must run `f` anyway (after its 5 ms wait) without deadlocking.
    let p = pool(2);
    let release = AtomicBool::new(false);
    let held = AtomicBool::new(false);
    p.install(|| {
        rayon::scope(|s| {
            s.spawn(|_| {
                held.store(true, Ordering::Release);
                while !release.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
            });
            let t = Instant::now();
            while !held.load(Ordering::Acquire) {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "helper never started"
                );
                std::thread::yield_now();
            }
            let v = keep_warm(|| {
                // Parallel work while the other worker is busy runs here alone.
                let used = workers_used();
                assert_eq!(used.len(), 1, "only this worker is free: {used:?}");
                5
            });
            assert_eq!(v, 5);
            release.store(true, Ordering::Release);
        });
        // The unstarted spinner saw the stop flag: the pool is usable and both workers run.
        assert_eq!(workers_used().len(), 2);
    });
}

#[test]
fn keep_warm_stops_its_spinners_when_f_panics() {
    let p = pool(2);
    p.install(|| {
        let r = std::panic::catch_unwind(|| keep_warm(|| panic!("inside")));
        assert!(r.is_err());
        // The spinner stopped: a later parallel call ends, on both workers.
        assert_eq!(workers_used().len(), 2);
    });
}
