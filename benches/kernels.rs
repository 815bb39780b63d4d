//! Criterion benches of the CPU kernels on the active path (`SPECMOE_ISA` selects another):
//! the named problems of issue #3 (`matmul_bf16_t{1,8,64}`, `attn_verify_n{1,8}_l2048` and
//! their bf16/f16 KV variants, see `specmoe_cpu_kernels::workloads`) and the small kernels.
//!
//! `cargo bench --bench kernels [-- filter]`. Throughput is reported in bytes of the
//! problem's minimum traffic (weights or KV cache read once), so criterion's GB/s compares
//! directly with the DRAM ceiling of `specmoe bench kernels`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use specmoe_cpu_kernels::activation::silu_mul_inplace_with;
use specmoe_cpu_kernels::dispatch;
use specmoe_cpu_kernels::norm::rms_norm_inplace_with;
use specmoe_cpu_kernels::select::softmax_inplace_with;
use specmoe_cpu_kernels::workloads::Workload;
use std::hint::black_box;
use std::time::Duration;

fn named(c: &mut Criterion) {
    let isa = dispatch::active();
    let mut g = c.benchmark_group(format!("kernels/{isa}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    // Four sequences keep the attention KV cache (≥ 33 MB) above the last-level cache.
    for w in Workload::named(4) {
        g.throughput(Throughput::Bytes(w.bytes() as u64));
        // Prepared on first use only, so that a filter skips the big allocations.
        let mut prepared = None;
        g.bench_function(&w.name, |b| {
            let p = prepared.get_or_insert_with(|| w.prepare());
            b.iter(|| p.run(isa))
        });
    }
    g.finish();
}

fn small(c: &mut Criterion) {
    let isa = dispatch::active();
    let mut g = c.benchmark_group(format!("small/{isa}"));
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1));
    // Fresh inputs for every iteration (setup not timed): applying a kernel to its own
    // output again and again drifts into denormals.
    let w: Vec<f32> = (0..4096).map(|i| 1.0 + (i % 7) as f32 * 0.01).collect();
    let x: Vec<f32> = (0..8 * 4096).map(|i| (i % 19) as f32 - 9.0).collect();
    g.throughput(Throughput::Bytes((x.len() * 8) as u64));
    g.bench_function("rms_norm_8x4096", |b| {
        b.iter_batched_ref(
            || x.clone(),
            |x| rms_norm_inplace_with(isa, black_box(x), &w, 1e-5),
            BatchSize::SmallInput,
        )
    });
    let gate: Vec<f32> = (0..14336).map(|i| (i % 23) as f32 * 0.3 - 3.0).collect();
    let up = gate.clone();
    g.throughput(Throughput::Bytes((gate.len() * 12) as u64));
    g.bench_function("silu_mul_14336", |b| {
        b.iter_batched_ref(
            || gate.clone(),
            |g| silu_mul_inplace_with(isa, black_box(g), &up),
            BatchSize::SmallInput,
        )
    });
    let logits: Vec<f32> = (0..32000).map(|i| (i % 101) as f32 * 0.1).collect();
    g.throughput(Throughput::Bytes((logits.len() * 12) as u64));
    g.bench_function("softmax_32000", |b| {
        b.iter_batched_ref(
            || logits.clone(),
            |l| softmax_inplace_with(isa, black_box(l)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, named, small);
criterion_main!(benches);
