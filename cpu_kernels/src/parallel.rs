//! Where a kernel's work runs: split over the rayon pool, or kept on the calling thread.
//!
//! Speculative decoding drafts the next block on one worker while the target verifies on
//! the others. The draft is a chain of small steps; if one of them forks (an attention call
//! over two KV heads, say) and another worker takes half, the drafting worker waits for it —
//! and rayon lets a waiting worker run the target's queued tasks meanwhile, so the short
//! draft chain ends up behind a long target task. [`on_this_thread`] runs such a chain with
//! every kernel it calls kept on the calling thread.

use std::cell::Cell;

thread_local! {
    static PINNED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every kernel of this crate that it calls (and [`may_fork`]'s other
/// callers) running on the calling thread, never forking into the rayon pool. Nests.
pub fn on_this_thread<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PINNED.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PINNED.with(|p| p.replace(true)));
    f()
}

/// Whether work may be split over the rayon pool here: the pool has two threads or more
/// and the caller is not inside [`on_this_thread`].
pub fn may_fork() -> bool {
    !PINNED.with(|p| p.get()) && rayon::current_num_threads() > 1
}

/// Runs `f` (on a worker of the current rayon pool) with the pool's other workers kept
/// polling for work instead of going to sleep.
///
/// A decode step makes dozens of parallel calls separated by short serial stretches (norms,
/// RoPE, routing, sampling, a serially drafted block). A rayon worker that finds no work
/// for ≈ 20 µs goes to sleep, and waking it costs the next call ≈ 6–8 µs (measured on the
/// 2-core VM: `rayon::join` of two 20 µs halves after a serial gap of 10 µs cost 1.1 µs
/// more than 20 µs, after a gap of 20–160 µs 7–8 µs more, after 320 µs 16 µs more;
/// `examples/wake_bench`; inside `keep_warm`: 1.0–1.5 µs whatever the gap). Here
/// each other worker runs a job that loops on [`rayon::yield_now`] — so it takes any job
/// as soon as it is queued — until `f` returns. The cost is those cores spinning while `f`
/// runs, as OpenMP runtimes do by default.
///
/// If a spinner has not started within 5 ms (its worker busy elsewhere), `f` runs without
/// it. Outside a pool, with one thread, or while another `keep_warm` runs anywhere in the
/// process (concurrent generations, or nested calls: their spinners would only compete for
/// the same workers), this is just `f()`.
pub fn keep_warm<R>(f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    static ACTIVE: AtomicUsize = AtomicUsize::new(0);
    struct Active;
    impl Drop for Active {
        fn drop(&mut self) {
            ACTIVE.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let first = ACTIVE.fetch_add(1, Ordering::AcqRel) == 0;
    let _active = Active;
    let others = rayon::current_num_threads().saturating_sub(1);
    if !first || others == 0 || rayon::current_thread_index().is_none() {
        return f();
    }
    struct Shared {
        stop: AtomicBool,
        started: AtomicUsize,
    }
    let sh = Arc::new(Shared {
        stop: AtomicBool::new(false),
        started: AtomicUsize::new(0),
    });
    for _ in 0..others {
        let sh = Arc::clone(&sh);
        rayon::spawn(move || {
            if sh.stop.load(Ordering::Acquire) {
                return;
            }
            sh.started.fetch_add(1, Ordering::AcqRel);
            while !sh.stop.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        });
    }
    // Every spinner must be running on another worker before `f` may wait on a latch: a
    // worker waiting in `f` could otherwise pop a queued spinner and never return to `f`.
    let t = std::time::Instant::now();
    while sh.started.load(Ordering::Acquire) < others {
        if t.elapsed() > std::time::Duration::from_millis(5) {
            sh.stop.store(true, Ordering::Release);
            break;
        }
        std::thread::yield_now();
    }
    struct Stop(Arc<Shared>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.stop.store(true, Ordering::Release);
        }
    }
    let _stop = Stop(sh);
    f()
}
