//! Random weights with the real shapes of published models, generated in memory with a fixed
//! seed, for `specmoe bench --shape` (no download needed). `--layers` truncates depth so the
//! model fits in RAM; everything else (width, experts, vocabulary) is the real shape.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensor::{AlignedBytes, Storage, Tensor, TensorStore};
use rayon::prelude::*;
use specmoe_cpu_kernels::dtype::store_f32;
use specmoe_cpu_kernels::DType;
use std::path::Path;
use std::sync::Arc;

/// Model shapes `bench --shape` knows.
pub const SHAPES: [&str; 2] = ["mixtral-8x7b", "mixtral-8x22b"];

/// The `config.json` of a known shape with `layers` decoder layers (`None` = all).
///
/// Errors: an unknown shape name, or `layers` of 0.
pub fn shape_config(name: &str, layers: Option<usize>) -> Result<ModelConfig> {
    // (hidden, intermediate, layers, heads, kv heads, vocab, rope theta)
    let (h, i, l, nh, nkv, vocab, theta) = match name {
        "mixtral-8x7b" => (4096, 14336, 32, 32, 8, 32000, 1e6),
        "mixtral-8x22b" => (6144, 16384, 56, 48, 8, 32768, 1e6),
        _ => {
            return Err(Error::Input(format!(
                "--shape: unknown shape '{name}' (expected one of {})",
                SHAPES.join(", ")
            )))
        }
    };
    let layers = layers.unwrap_or(l);
    if layers == 0 {
        return Err(Error::Input("--layers must be at least 1".into()));
    }
    let v = serde_json::json!({
        "architectures": ["MixtralForCausalLM"],
        "hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers,
        "num_attention_heads": nh, "num_key_value_heads": nkv, "vocab_size": vocab,
        "num_local_experts": 8, "num_experts_per_tok": 2, "rope_theta": theta,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 32768,
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": false,
    });
    ModelConfig::from_json(&v, Path::new(name))
}

/// Every tensor name and shape a Mixtral config needs (Hugging Face layout).
fn mixtral_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, d) = (cfg.hidden_size, cfg.head_dim);
    let m = cfg.moe.as_ref().expect("mixtral config has moe");
    let inter = m.expert_intermediate_size;
    let mut t = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![cfg.vocab_size, h],
        ),
        ("model.norm.weight".to_string(), vec![h]),
        ("lm_head.weight".to_string(), vec![cfg.vocab_size, h]),
    ];
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        t.push((format!("{p}.input_layernorm.weight"), vec![h]));
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        t.push((
            format!("{p}.self_attn.q_proj.weight"),
            vec![cfg.num_heads * d, h],
        ));
        t.push((
            format!("{p}.self_attn.k_proj.weight"),
            vec![cfg.num_kv_heads * d, h],
        ));
        t.push((
            format!("{p}.self_attn.v_proj.weight"),
            vec![cfg.num_kv_heads * d, h],
        ));
        t.push((
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, cfg.num_heads * d],
        ));
        t.push((
            format!("{p}.block_sparse_moe.gate.weight"),
            vec![m.num_experts, h],
        ));
        for e in 0..m.num_experts {
            let x = format!("{p}.block_sparse_moe.experts.{e}");
            t.push((format!("{x}.w1.weight"), vec![inter, h]));
            t.push((format!("{x}.w3.weight"), vec![inter, h]));
            t.push((format!("{x}.w2.weight"), vec![h, inter]));
        }
    }
    t
}

/// SplitMix64: a small, fast, well-mixed generator for filling buffers deterministically.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random Mixtral weights for `cfg` in `dtype`: matrices uniform in `±sqrt(3/in)` (unit
/// variance activations), norm weights 1. Deterministic in `seed`; generated in parallel.
pub fn random_mixtral(cfg: &ModelConfig, dtype: DType, seed: u64) -> TensorStore {
    let mut store = TensorStore::new(format!("random weights (seed {seed})"));
    for (ti, (name, shape)) in mixtral_tensors(cfg).into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let mut owned = AlignedBytes::zeroed(n * dtype.size());
        let buf = owned.as_mut_slice();
        if shape.len() == 1 {
            (0..n).for_each(|i| store_f32(buf, dtype, i, 1.0));
        } else {
            let a = (3.0 / shape[1] as f32).sqrt();
            const CHUNK: usize = 1 << 16;
            let es = dtype.size();
            buf.par_chunks_mut(CHUNK * es)
                .enumerate()
                .for_each(|(c, bytes)| {
                    let mut st =
                        seed ^ ((ti as u64) << 40) ^ (c as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
                    for i in 0..bytes.len() / es {
                        let u = (splitmix(&mut st) >> 40) as f32 / (1u64 << 24) as f32;
                        store_f32(bytes, dtype, i, (2.0 * u - 1.0) * a);
                    }
                });
        }
        let len = buf.len();
        let t = Tensor::new(dtype, shape, Arc::new(Storage::Owned(owned)), 0, len)
            .expect("sizes computed from the shape");
        store.insert(name, t);
    }
    store
}
