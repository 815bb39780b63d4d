//! Per-layer weights of every supported architecture, looked up by Hugging Face tensor name
//! and validated against the config. An architecture is a naming scheme plus config flags;
//! all of them share one attention block and one MLP/MoE block.

use crate::config::{Arch, ModelConfig, QkNorm};
use crate::error::Result;
use crate::tensor::{Tensor, TensorStore};

/// A linear layer `y = x Wᵀ + b`, `W` `[out, in]` in its stored dtype.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Weight `[out_features, in_features]`.
    pub weight: Tensor,
    /// Bias `[out_features]` in f32.
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    fn load(s: &TensorStore, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: s.get(&format!("{prefix}.weight"), &[out, inp])?,
            bias: if bias {
                Some(s.vector(&format!("{prefix}.bias"), out)?)
            } else {
                None
            },
        })
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.shape[0]
    }
}

/// Attention projections and optional q/k norms.
#[derive(Clone, Debug)]
pub struct AttnWeights {
    /// `[heads·d, hidden]`.
    pub q: Linear,
    /// `[kv_heads·d, hidden]`.
    pub k: Linear,
    /// `[kv_heads·d, hidden]`.
    pub v: Linear,
    /// `[hidden, heads·d]`.
    pub o: Linear,
    /// q norm weight: `[d]` (per head) or `[heads·d]` (full).
    pub q_norm: Option<Vec<f32>>,
    /// k norm weight: `[d]` (per head) or `[kv_heads·d]` (full).
    pub k_norm: Option<Vec<f32>>,
}

/// A gated MLP `down(silu(gate(x)) · up(x))` (one expert, a shared expert or a dense MLP).
#[derive(Clone, Debug)]
pub struct MlpWeights {
    /// `[inter, hidden]` (Mixtral `w1`).
    pub gate: Tensor,
    /// `[inter, hidden]` (Mixtral `w3`).
    pub up: Tensor,
    /// `[hidden, inter]` (Mixtral `w2`).
    pub down: Tensor,
}

impl MlpWeights {
    fn load(s: &TensorStore, names: [String; 3], hidden: usize, inter: usize) -> Result<Self> {
        Ok(MlpWeights {
            gate: s.get(&names[0], &[inter, hidden])?,
            up: s.get(&names[1], &[inter, hidden])?,
            down: s.get(&names[2], &[hidden, inter])?,
        })
    }

    /// Bytes of the three matrices.
    pub fn bytes(&self) -> usize {
        self.gate.bytes().len() + self.up.bytes().len() + self.down.bytes().len()
    }
}

/// A mixture-of-experts block.
#[derive(Clone, Debug)]
pub struct MoeWeights {
    /// Router `[num_experts, hidden]`.
    pub router: Tensor,
    /// Routed experts.
    pub experts: Vec<MlpWeights>,
    /// Shared expert and its sigmoid gate `[1, hidden]` (Qwen2-MoE).
    pub shared: Option<(MlpWeights, Tensor)>,
    /// Experts per token.
    pub top_k: usize,
    /// Renormalise top-k weights.
    pub norm_topk_prob: bool,
}

/// The feed-forward half of a layer.
#[derive(Clone, Debug)]
pub enum FfnWeights {
    /// Dense gated MLP.
    Dense(MlpWeights),
    /// Mixture of experts.
    Moe(MoeWeights),
}

/// One decoder layer.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// RMSNorm before attention `[hidden]`.
    pub input_norm: Vec<f32>,
    /// RMSNorm before the MLP `[hidden]`.
    pub post_attn_norm: Vec<f32>,
    /// Attention.
    pub attn: AttnWeights,
    /// MLP or MoE.
    pub ffn: FfnWeights,
}

/// All weights of a model.
#[derive(Clone, Debug)]
pub struct ModelWeights {
    /// Token embedding `[vocab, hidden]`.
    pub embed: Tensor,
    /// Decoder layers.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm `[hidden]`.
    pub norm: Vec<f32>,
    /// LM head `[vocab, hidden]` (the embedding when tied).
    pub lm_head: Tensor,
}

impl ModelWeights {
    /// Looks up and validates every tensor `cfg` requires.
    ///
    /// Errors: a missing tensor or one of another shape, named with the checkpoint.
    pub fn load(cfg: &ModelConfig, s: &TensorStore) -> Result<Self> {
        let h = cfg.hidden_size;
        let embed = s.get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let lm_head = if cfg.tie_word_embeddings && !s.contains("lm_head.weight") {
            embed.clone()
        } else {
            s.get("lm_head.weight", &[cfg.vocab_size, h])?
        };
        let layers = (0..cfg.num_layers)
            .map(|i| load_layer(cfg, s, i))
            .collect::<Result<_>>()?;
        Ok(ModelWeights {
            embed,
            layers,
            norm: s.vector("model.norm.weight", h)?,
            lm_head,
        })
    }
}

fn load_layer(cfg: &ModelConfig, s: &TensorStore, i: usize) -> Result<LayerWeights> {
    let h = cfg.hidden_size;
    let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let p = format!("model.layers.{i}");
    let a = format!("{p}.self_attn");
    let (qn, kn) = match cfg.qk_norm {
        QkNorm::None => (None, None),
        QkNorm::PerHead => (Some(d), Some(d)),
        QkNorm::Full => (Some(nh * d), Some(nkv * d)),
    };
    let attn = AttnWeights {
        q: Linear::load(s, &format!("{a}.q_proj"), nh * d, h, cfg.qkv_bias)?,
        k: Linear::load(s, &format!("{a}.k_proj"), nkv * d, h, cfg.qkv_bias)?,
        v: Linear::load(s, &format!("{a}.v_proj"), nkv * d, h, cfg.qkv_bias)?,
        o: Linear::load(s, &format!("{a}.o_proj"), h, nh * d, cfg.o_bias)?,
        q_norm: qn
            .map(|n| s.vector(&format!("{a}.q_norm.weight"), n))
            .transpose()?,
        k_norm: kn
            .map(|n| s.vector(&format!("{a}.k_norm.weight"), n))
            .transpose()?,
    };
    let gud = |pre: &str| {
        [
            format!("{pre}.gate_proj.weight"),
            format!("{pre}.up_proj.weight"),
            format!("{pre}.down_proj.weight"),
        ]
    };
    let ffn = if cfg.is_moe_layer(i) {
        let m = cfg.moe.as_ref().expect("is_moe_layer implies moe config");
        let (router_name, expert_names): (String, Box<dyn Fn(usize) -> [String; 3]>) =
            match cfg.arch {
                Arch::Mixtral => {
                    let b = format!("{p}.block_sparse_moe");
                    let b2 = b.clone();
                    (
                        format!("{b}.gate.weight"),
                        Box::new(move |e| {
                            let x = format!("{b2}.experts.{e}");
                            [
                                format!("{x}.w1.weight"),
                                format!("{x}.w3.weight"),
                                format!("{x}.w2.weight"),
                            ]
                        }),
                    )
                }
                _ => {
                    let b = format!("{p}.mlp");
                    let b2 = b.clone();
                    (
                        format!("{b}.gate.weight"),
                        Box::new(move |e| gud(&format!("{b2}.experts.{e}"))),
                    )
                }
            };
        let experts = (0..m.num_experts)
            .map(|e| MlpWeights::load(s, expert_names(e), h, m.expert_intermediate_size))
            .collect::<Result<_>>()?;
        let shared = match m.shared_expert_intermediate_size {
            Some(si) => Some((
                MlpWeights::load(s, gud(&format!("{p}.mlp.shared_expert")), h, si)?,
                s.get(&format!("{p}.mlp.shared_expert_gate.weight"), &[1, h])?,
            )),
            None => None,
        };
        FfnWeights::Moe(MoeWeights {
            router: s.get(&router_name, &[m.num_experts, h])?,
            experts,
            shared,
            top_k: m.top_k,
            norm_topk_prob: m.norm_topk_prob,
        })
    } else {
        FfnWeights::Dense(MlpWeights::load(
            s,
            gud(&format!("{p}.mlp")),
            h,
            cfg.intermediate_size,
        )?)
    };
    Ok(LayerWeights {
        input_norm: s.vector(&format!("{p}.input_layernorm.weight"), h)?,
        post_attn_norm: s.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
        attn,
        ffn,
    })
}
