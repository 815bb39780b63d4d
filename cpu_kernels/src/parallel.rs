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
