//! `config.json` in the transformers 4.x and 5.x styles, and the errors of bad configs.

use serde_json::json;
use specmoe::config::{Arch, ModelConfig, QkNorm, RopeScaling};
use std::path::Path;

fn parse(v: serde_json::Value) -> specmoe::Result<ModelConfig> {
    ModelConfig::from_json(&v, Path::new("config.json"))
}

fn mixtral_base() -> serde_json::Value {
    json!({"architectures": ["MixtralForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 100, "num_local_experts": 8, "num_experts_per_tok": 2})
}

#[test]
fn v4_and_v5_rope_styles_agree() {
    let mut v4 = mixtral_base();
    v4["rope_theta"] = json!(5000.0);
    v4["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
    v4["torch_dtype"] = json!("bfloat16");
    let mut v5 = mixtral_base();
    v5["rope_parameters"] = json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0});
    v5["dtype"] = json!("bfloat16");
    let (a, b) = (parse(v4).unwrap(), parse(v5).unwrap());
    assert_eq!(a, b);
    assert_eq!(a.rope_theta, 5000.0);
    assert_eq!(a.rope_scaling, RopeScaling::Linear { factor: 2.0 });
    assert_eq!(a.dtype.as_deref(), Some("bfloat16"));
    assert_eq!(a.head_dim, 16);
}

#[test]
fn qwen_moe_layers_and_flags() {
    let v = json!({"architectures": ["Qwen2MoeForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
        "moe_intermediate_size": 16, "shared_expert_intermediate_size": 48, "num_hidden_layers": 4,
        "num_attention_heads": 4, "vocab_size": 50, "num_experts": 4, "num_experts_per_tok": 2,
        "decoder_sparse_step": 2, "mlp_only_layers": [3], "eos_token_id": [2, 7]});
    let c = parse(v).unwrap();
    assert_eq!(c.arch, Arch::Qwen2Moe);
    assert!(c.qkv_bias && !c.o_bias);
    assert_eq!(
        (0..4).map(|i| c.is_moe_layer(i)).collect::<Vec<_>>(),
        [false, true, false, false]
    );
    assert_eq!(c.eos_token_ids, [2, 7]);
    assert_eq!(c.moe.unwrap().shared_expert_intermediate_size, Some(48));
}

#[test]
fn qk_norm_kinds() {
    let mut v = mixtral_base();
    v["architectures"] = json!(["OlmoeForCausalLM"]);
    v["num_experts"] = json!(8);
    assert_eq!(parse(v.clone()).unwrap().qk_norm, QkNorm::Full);
    v["architectures"] = json!(["Qwen3MoeForCausalLM"]);
    v["moe_intermediate_size"] = json!(32);
    v["head_dim"] = json!(24);
    let c = parse(v).unwrap();
    assert_eq!((c.qk_norm, c.head_dim), (QkNorm::PerHead, 24));
}

#[test]
fn bad_configs_are_named_errors() {
    let mut v = mixtral_base();
    v["architectures"] = json!(["FooForCausalLM"]);
    let e = parse(v).unwrap_err().to_string();
    assert!(
        e.contains("unknown architecture 'FooForCausalLM'") && e.contains("MixtralForCausalLM"),
        "{e}"
    );

    let mut v = mixtral_base();
    v.as_object_mut().unwrap().remove("hidden_size");
    assert!(parse(v).unwrap_err().to_string().contains("'hidden_size'"));

    let mut v = mixtral_base();
    v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
    let e = parse(v).unwrap_err().to_string();
    assert!(e.contains("yarn") && e.contains("not supported"), "{e}");

    let mut v = mixtral_base();
    v["num_experts_per_tok"] = json!(9);
    assert!(parse(v)
        .unwrap_err()
        .to_string()
        .contains("num_experts_per_tok"));

    let mut v = mixtral_base();
    v["num_key_value_heads"] = json!(3);
    assert!(parse(v)
        .unwrap_err()
        .to_string()
        .contains("num_key_value_heads"));
}

#[test]
fn llama3_rope_scaling_bands() {
    use specmoe::model::rope::inv_freq;
    let s = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64.0,
    };
    let base = inv_freq(16, 10000.0, &RopeScaling::Default);
    let scaled = inv_freq(16, 10000.0, &s);
    // Highest frequencies (short wavelengths) are untouched, the lowest are divided by 8.
    assert_eq!(scaled[0], base[0]);
    assert!((scaled[7] - base[7] / 8.0).abs() < 1e-12);
    assert!(
        scaled.iter().zip(&base).any(|(a, b)| a < b && *a > b / 8.0),
        "some band is smoothed"
    );
}

#[test]
fn generation_config_eos_list_stops_generation() {
    use specmoe::checkpoint::GenerationConfig;
    use specmoe::engine::{generate, FinishReason, GenRequest};
    use specmoe::sampling::SamplingParams;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_moe");
    let g = GenerationConfig::load(&dir).unwrap();
    assert_eq!(g.eos_token_ids, [2, 3]);
    // Stopping works on any id of such a list: use the 4th greedy token as the second EOS.
    let model = specmoe::model::Model::load(&dir, specmoe_cpu_kernels::DType::F32).unwrap();
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let as_ids = |n: &str| -> Vec<u32> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect()
    };
    let (prompt, greedy) = (as_ids("input_ids"), as_ids("greedy_ids"));
    let req = GenRequest {
        prompt_ids: prompt,
        max_new_tokens: 32,
        sampling: SamplingParams::default(),
        stop_ids: vec![g.eos_token_ids[0], greedy[3]],
    };
    let (out, _) = generate(&model, &[req], |_, _| {}).unwrap();
    assert_eq!(out[0].output_ids, greedy[..4]);
    assert_eq!(out[0].finish, FinishReason::Eos);
}
