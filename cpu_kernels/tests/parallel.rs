//! `parallel::on_this_thread`: the flag it sets, its nesting and unwinding, and that kernels
//! run inside it give bitwise what they give when they fork.

mod common;
use common::*;
use specmoe_cpu_kernels::matmul::{matmul, WeightMatrix};
use specmoe_cpu_kernels::parallel::{may_fork, on_this_thread};
use specmoe_cpu_kernels::DType;

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
