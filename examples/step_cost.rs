//! Cost of one forward step of the bundled target and draft against the number of new
//! tokens in the block: the verification cost model of speculative decoding.
//!
//! `cargo run --release --example step_cost [-- THREADS [CONTEXT]]` prints, for blocks of
//! `n` tokens (env `NS=1,2,4`, default 1..=9) after a context of CONTEXT positions (default
//! 96), the median time of a target step, its ratio to the first block size, and the same
//! for the draft. Every repetition feeds other tokens, so that the routing (and the experts
//! read) changes as in a real decode. The target computes logits for every row (as a
//! verification step does), the draft for the last row over its `--draft-vocab auto` head
//! (as a drafting step does). `DRAFT_ONLY=1` times the draft alone (for profiling).

use specmoe::model::{LogitRows, Model, SeqStep};
use specmoe::speculative::vocab::DraftVocab;
use specmoe_cpu_kernels::parallel::keep_warm;
use specmoe_cpu_kernels::DType;
use std::time::Instant;

/// Median seconds of a step of each block size in `ns`, at `ctx` positions of context.
fn step_times(m: &Model, ctx: usize, ns: &[usize], reps: usize, rows: LogitRows) -> Vec<f64> {
    let mut cache = m.new_cache();
    let prompt: Vec<u32> = (0..ctx as u32).map(|i| 5 + (i * 37) % 4000).collect();
    m.forward(
        &mut [SeqStep {
            tokens: &prompt,
            cache: &mut cache,
            logits: LogitRows::Last(1),
        }],
        false,
    )
    .expect("prefill");
    let mut out = Vec::new();
    for &n in ns {
        let mut ts = Vec::with_capacity(reps);
        for rep in 0..reps as u32 {
            let block: Vec<u32> = (0..n as u32)
                .map(|i| 11 + (rep * 7919 + i * 101) % 4000)
                .collect();
            let t = Instant::now();
            m.forward(
                &mut [SeqStep {
                    tokens: &block,
                    cache: &mut cache,
                    logits: rows,
                }],
                false,
            )
            .expect("step");
            ts.push(t.elapsed().as_secs_f64());
            cache.truncate(ctx);
        }
        ts.sort_by(f64::total_cmp);
        out.push(ts[reps / 2]);
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let ctx: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(96);
    let ns: Vec<usize> = std::env::var("NS")
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_else(|| (1..=9).collect());
    let only_draft = std::env::var_os("DRAFT_ONLY").is_some();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let target = Model::load(&specmoe::bundled_model_dir(), DType::F32).expect("target");
    let dir = specmoe::bundled_draft_dir();
    let mut draft = Model::load(&dir, DType::F32).expect("draft");
    // As `--draft-vocab auto` runs it: the LM head over the most frequent quarter.
    specmoe::speculative::vocab::apply(&mut draft, &dir, DraftVocab::Auto).expect("draft vocab");
    pool.install(|| {
        let t = if only_draft {
            Vec::new()
        } else {
            // Other workers kept polling, as during generation (`parallel::keep_warm`).
            keep_warm(|| step_times(&target, ctx, &ns, 301, LogitRows::All))
        };
        let reps = if only_draft { 5001 } else { 301 };
        let d = step_times(&draft, ctx, &ns, reps, LogitRows::Last(1));
        println!("threads {threads}, context {ctx}");
        println!("n  target_us  ratio  draft_us  draft/target");
        for (i, &n) in ns.iter().enumerate() {
            let (tu, tr) = t
                .get(i)
                .map_or((f64::NAN, f64::NAN), |&v| (v * 1e6, v / t[0]));
            let dr = t.get(i).map_or(f64::NAN, |&v| d[i] / v);
            println!("{n}  {tu:9.1}  {tr:5.2}  {:8.1}  {dr:5.3}", d[i] * 1e6);
        }
    });
}
