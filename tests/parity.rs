//! Parity with Hugging Face transformers on the committed fixtures: prompt logits, greedy
//! continuations and routing decisions, for every supported architecture.

mod common;

use common::{fixture, max_abs_diff, reference, FIXTURES};
use specmoe::engine::{generate, GenRequest};
use specmoe::model::{LogitRows, Model, SeqStep};
use specmoe::sampling::SamplingParams;
use specmoe_cpu_kernels::DType;

/// Logit tolerance for f32 checkpoints (DESIGN.md: within 1e-4 of transformers).
const TOL_F32: f32 = 1e-4;
/// bf16-stored weights: the reference computes in f32 from the same bf16-rounded values, so
/// only the order of f32 accumulation differs. Measured (2026-11): max |Δ| 6.2e-6 on
/// `mixtral_bf16`, against 4.3e-6 for the f32 `mixtral` and at most 1.6e-5 (`qwen2`) over
/// all fixtures; the same 1e-4 bound therefore holds with margin.
const TOL_BF16: f32 = 1e-4;

fn tol(name: &str) -> f32 {
    if name.ends_with("bf16") {
        TOL_BF16
    } else {
        TOL_F32
    }
}

fn logits_of(model: &Model, ids: &[u32]) -> (Vec<f32>, Vec<(usize, specmoe::model::Routing)>) {
    let mut cache = model.new_cache();
    let mut out = model
        .forward(
            &mut [SeqStep {
                tokens: ids,
                cache: &mut cache,
                logits: LogitRows::All,
            }],
            true,
        )
        .unwrap();
    (out.logits.remove(0), out.routing)
}

#[test]
fn prompt_logits_match_transformers() {
    for name in FIXTURES {
        let r = reference(name);
        let model = Model::load(&fixture(name), DType::F32).unwrap();
        for (ids, want) in [(&r.input_ids, &r.logits), (&r.input_ids_b, &r.logits_b)] {
            let (got, _) = logits_of(&model, ids);
            let d = max_abs_diff(&got, want);
            eprintln!(
                "{name}: max |logit diff| vs transformers = {d:.2e} ({} tokens)",
                ids.len()
            );
            assert!(
                d <= tol(name),
                "{name}: max |logit diff| {d} > {}",
                tol(name)
            );
        }
    }
}

#[test]
fn greedy_continuations_match_transformers() {
    for name in FIXTURES {
        let r = reference(name);
        let model = Model::load(&fixture(name), DType::F32).unwrap();
        for (ids, want) in [
            (&r.input_ids, &r.greedy_ids),
            (&r.input_ids_b, &r.greedy_ids_b),
        ] {
            let req = GenRequest {
                prompt_ids: ids.clone(),
                max_new_tokens: want.len(),
                sampling: SamplingParams::default(),
                stop_ids: vec![],
            };
            let (out, _) = generate(&model, &[req], |_, _| {}).unwrap();
            assert_eq!(
                &out[0].output_ids, want,
                "{name}: greedy continuation differs"
            );
        }
    }
}

#[test]
fn routing_matches_transformers() {
    let mut checked = 0;
    for name in FIXTURES {
        let r = reference(name);
        let Some((shape, topk)) = &r.router_topk else {
            continue;
        };
        let weights = r.router_weights.as_ref().expect("router_weights");
        let layers = r.router_layers.as_ref().expect("router_layers");
        let model = Model::load(&fixture(name), DType::F32).unwrap();
        let (_, routing) = logits_of(&model, &r.input_ids);
        let (n_layers, n_tok, k) = (shape[0], shape[1], shape[2]);
        assert_eq!(routing.len(), n_layers, "{name}: MoE layer count");
        for (li, (layer, rt)) in routing.iter().enumerate() {
            assert_eq!(*layer as i64, layers[li], "{name}: MoE layer index");
            assert_eq!(rt.len(), n_tok, "{name}: routed token count");
            for (t, choices) in rt.iter().enumerate() {
                assert_eq!(choices.len(), k, "{name}: top-k");
                for (j, &(expert, weight)) in choices.iter().enumerate() {
                    let at = (li * n_tok + t) * k + j;
                    assert_eq!(
                        expert as i64, topk[at],
                        "{name}: layer {layer} token {t} choice {j}"
                    );
                    let dw = (weight - weights[at]).abs();
                    assert!(
                        dw < 1e-5,
                        "{name}: layer {layer} token {t} weight differs by {dw}"
                    );
                }
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "expected routing references for every MoE fixture, found {checked}"
    );
}
