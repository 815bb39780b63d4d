//! Self-consistency of the engine: batching, KV caching and cache dtypes.

mod common;

use common::{fixture, max_abs_diff, reference};
use specmoe::engine::{generate, GenRequest};
use specmoe::model::{LogitRows, Model, SeqStep};
use specmoe::sampling::SamplingParams;
use specmoe_cpu_kernels::DType;

fn req(ids: &[u32], n: usize, sampling: SamplingParams) -> GenRequest {
    GenRequest {
        prompt_ids: ids.to_vec(),
        max_new_tokens: n,
        sampling,
        stop_ids: vec![],
    }
}

#[test]
fn batched_generation_equals_one_at_a_time() {
    for name in ["mixtral", "qwen2_moe", "llama"] {
        let r = reference(name);
        let model = Model::load(&fixture(name), DType::F32).unwrap();
        for sampling in [
            SamplingParams::default(),
            SamplingParams {
                temperature: 0.8,
                top_k: 20,
                top_p: 0.9,
                seed: 7,
            },
        ] {
            let reqs = vec![
                req(&r.input_ids, 12, sampling.clone()),
                req(&r.input_ids_b, 20, sampling.clone()),
            ];
            let (batched, _) = generate(&model, &reqs, |_, _| {}).unwrap();
            for (i, rq) in reqs.iter().enumerate() {
                let (alone, _) = generate(&model, std::slice::from_ref(rq), |_, _| {}).unwrap();
                assert_eq!(
                    batched[i].output_ids, alone[0].output_ids,
                    "{name}: prompt {i} batched vs alone"
                );
            }
        }
    }
}

#[test]
fn kv_cached_decode_equals_full_recompute() {
    for name in ["mixtral", "qwen3_moe", "olmoe"] {
        let r = reference(name);
        let model = Model::load(&fixture(name), DType::F32).unwrap();
        // Decode token by token with the cache, keeping each step's logits.
        let mut cache = model.new_cache();
        let mut seq = r.input_ids.clone();
        let mut step_logits = Vec::new();
        let mut block: Vec<u32> = seq.clone();
        for _ in 0..10 {
            let out = model
                .forward(
                    &mut [SeqStep {
                        tokens: &block,
                        cache: &mut cache,
                        logits: LogitRows::Last(1),
                    }],
                    false,
                )
                .unwrap();
            let l = out.logits[0].clone();
            let next = specmoe_cpu_kernels::select::argmax(&l) as u32;
            step_logits.push(l);
            seq.push(next);
            block = vec![next];
        }
        // One full pass over the whole sequence without a cache.
        let mut fresh = model.new_cache();
        let n = seq.len() - 1;
        let out = model
            .forward(
                &mut [SeqStep {
                    tokens: &seq[..n],
                    cache: &mut fresh,
                    logits: LogitRows::All,
                }],
                false,
            )
            .unwrap();
        let vocab = model.cfg.vocab_size;
        let p = r.input_ids.len();
        for (i, l) in step_logits.iter().enumerate() {
            let row = &out.logits[0][(p - 1 + i) * vocab..(p + i) * vocab];
            let d = max_abs_diff(l, row);
            assert!(
                d < 1e-4,
                "{name}: step {i} cached vs recomputed logits differ by {d}"
            );
        }
    }
}

#[test]
fn half_precision_kv_cache_stays_close() {
    let r = reference("mixtral");
    for dt in [DType::F16, DType::BF16] {
        let model = Model::load(&fixture("mixtral"), dt).unwrap();
        let mut cache = model.new_cache();
        let out = model
            .forward(
                &mut [SeqStep {
                    tokens: &r.input_ids,
                    cache: &mut cache,
                    logits: LogitRows::All,
                }],
                false,
            )
            .unwrap();
        let d = max_abs_diff(&out.logits[0], &r.logits);
        // Rounding K/V to 8 (bf16) or 11 (f16) mantissa bits perturbs scores by ~1e-2 relative.
        assert!(d < 0.15, "{dt} KV cache: logits differ by {d}");
        assert!(d > 0.0, "{dt} KV cache should round something");
    }
}

#[test]
fn ragged_batch_forward_equals_separate_forwards() {
    let r = reference("qwen2_moe");
    let model = Model::load(&fixture("qwen2_moe"), DType::F32).unwrap();
    let (mut c1, mut c2) = (model.new_cache(), model.new_cache());
    let out = model
        .forward(
            &mut [
                SeqStep {
                    tokens: &r.input_ids,
                    cache: &mut c1,
                    logits: LogitRows::All,
                },
                SeqStep {
                    tokens: &r.input_ids_b,
                    cache: &mut c2,
                    logits: LogitRows::All,
                },
            ],
            false,
        )
        .unwrap();
    assert!(max_abs_diff(&out.logits[0], &r.logits) < 1e-4);
    assert!(max_abs_diff(&out.logits[1], &r.logits_b) < 1e-4);
}

/// Logits of `block` appended to `prompt`, once as one verification block (all rows) and
/// once token by token (one decode step each).
fn block_and_single_logits(model: &Model, prompt: &[u32], block: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut c1 = model.new_cache();
    model
        .forward(
            &mut [SeqStep {
                tokens: prompt,
                cache: &mut c1,
                logits: LogitRows::Last(1),
            }],
            false,
        )
        .unwrap();
    let mut c2 = c1.clone();
    let mut singles = Vec::new();
    for &t in block {
        let o = model
            .forward(
                &mut [SeqStep {
                    tokens: &[t],
                    cache: &mut c1,
                    logits: LogitRows::Last(1),
                }],
                false,
            )
            .unwrap();
        singles.extend_from_slice(&o.logits[0]);
    }
    let o = model
        .forward(
            &mut [SeqStep {
                tokens: block,
                cache: &mut c2,
                logits: LogitRows::All,
            }],
            false,
        )
        .unwrap();
    (o.logits[0].clone(), singles)
}

/// Batch invariance: every row of a `k+1`-token verification step is bit for bit the logits
/// of the same token decoded alone, so greedy speculative decoding is exact, not only
/// within rounding. Block sizes cover every matmul tile plan (1..=9 tokens) and both
/// attention forms; contexts cross the attention's 32-position chunks.
#[test]
fn verification_block_logits_equal_single_token_decode_bitwise() {
    let bundled = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-mixtral");
    let cases = [
        (fixture("mixtral"), 9, vec![2, 4, 9]),
        (fixture("qwen3_moe"), 9, vec![5, 8]),
        (fixture("olmoe"), 40, vec![3, 7]),
        (bundled.clone(), 33, vec![2, 3, 4, 5, 6, 7, 8, 9]),
        (bundled, 150, vec![4, 9]),
    ];
    for (dir, plen, blocks) in cases {
        for kv in [DType::F32, DType::BF16] {
            let model = Model::load(&dir, kv).unwrap();
            let vocab = model.cfg.vocab_size as u32;
            let prompt: Vec<u32> = (0..plen).map(|i| (i * 7 + 3) % (vocab - 2) + 2).collect();
            for n in blocks.iter().copied() {
                let block: Vec<u32> = (0..n as u32)
                    .map(|i| (i * 5 + 11) % (vocab - 2) + 2)
                    .collect();
                let (b, s) = block_and_single_logits(&model, &prompt, &block);
                let differ = b
                    .iter()
                    .zip(&s)
                    .filter(|(x, y)| x.to_bits() != y.to_bits())
                    .count();
                assert_eq!(
                    differ,
                    0,
                    "{}: {kv} KV, prompt {plen}, block {n}: {differ} logits differ (max |diff| {})",
                    dir.display(),
                    max_abs_diff(&b, &s)
                );
            }
        }
    }
}
