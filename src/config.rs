//! `config.json` of a Hugging Face model directory, in both the transformers 4.x style
//! (top-level `rope_theta`, `rope_scaling`, `torch_dtype`) and the 5.x style
//! (`rope_parameters`, `dtype`), mapped onto one [`ModelConfig`].

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Supported architectures (`architectures[0]` of `config.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `MixtralForCausalLM`: softmax → top-k → renormalise; `block_sparse_moe.experts.{e}.w1/w2/w3`.
    Mixtral,
    /// `Qwen2MoeForCausalLM`: qkv bias, shared expert with sigmoid gate, sparse-step layers.
    Qwen2Moe,
    /// `Qwen3MoeForCausalLM`: explicit `head_dim`, per-head q/k RMSNorm before RoPE.
    Qwen3Moe,
    /// `OlmoeForCausalLM`: q/k RMSNorm over the whole projection.
    Olmoe,
    /// `LlamaForCausalLM` (dense).
    Llama,
    /// `MistralForCausalLM` (dense).
    Mistral,
    /// `Qwen2ForCausalLM` (dense, qkv bias).
    Qwen2,
    /// `Qwen3ForCausalLM` (dense, per-head q/k RMSNorm).
    Qwen3,
}

impl Arch {
    /// Every supported architecture with its Hugging Face class name.
    pub const ALL: [(Arch, &'static str); 8] = [
        (Arch::Mixtral, "MixtralForCausalLM"),
        (Arch::Qwen2Moe, "Qwen2MoeForCausalLM"),
        (Arch::Qwen3Moe, "Qwen3MoeForCausalLM"),
        (Arch::Olmoe, "OlmoeForCausalLM"),
        (Arch::Llama, "LlamaForCausalLM"),
        (Arch::Mistral, "MistralForCausalLM"),
        (Arch::Qwen2, "Qwen2ForCausalLM"),
        (Arch::Qwen3, "Qwen3ForCausalLM"),
    ];

    /// The Hugging Face class name.
    pub fn hf_name(self) -> &'static str {
        Arch::ALL
            .iter()
            .find(|(a, _)| *a == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }

    /// Whether the architecture has mixture-of-experts layers.
    pub fn is_moe(self) -> bool {
        matches!(
            self,
            Arch::Mixtral | Arch::Qwen2Moe | Arch::Qwen3Moe | Arch::Olmoe
        )
    }
}

/// Where q/k RMSNorm is applied, if at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    /// No q/k normalisation.
    None,
    /// Per head over `head_dim` (Qwen3, Qwen3-MoE).
    PerHead,
    /// Over the whole q (`heads·d`) and k (`kv_heads·d`) projection (OLMoE).
    Full,
}

/// RoPE frequency scaling (`rope_scaling` / `rope_parameters.rope_type`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor` (inv_freq / factor).
    Linear {
        /// Scale factor.
        factor: f32,
    },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        /// Scale factor for low frequencies.
        factor: f32,
        /// Wavelength threshold factor for low frequencies.
        low_freq_factor: f32,
        /// Wavelength threshold factor for high frequencies.
        high_freq_factor: f32,
        /// Context length the model was pretrained with.
        original_max_position_embeddings: f32,
    },
}

/// The mixture-of-experts part of a config.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Routed experts per MoE layer.
    pub num_experts: usize,
    /// Experts chosen per token (`num_experts_per_tok`).
    pub top_k: usize,
    /// Expert intermediate size.
    pub expert_intermediate_size: usize,
    /// Renormalise the top-k routing weights to sum to 1.
    pub norm_topk_prob: bool,
    /// Shared expert intermediate size (Qwen2-MoE), gated by `sigmoid(shared_expert_gate)`.
    pub shared_expert_intermediate_size: Option<usize>,
    /// Layers `i` with `(i + 1) % decoder_sparse_step == 0` are MoE (Qwen-MoE; else 1).
    pub decoder_sparse_step: usize,
    /// Layers forced to a dense MLP (Qwen-MoE).
    pub mlp_only_layers: Vec<usize>,
}

/// Model hyper-parameters, normalised across architectures and transformers versions.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Vocabulary size (rows of the embedding and LM head).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Dense MLP intermediate size (dense models and dense layers of Qwen-MoE).
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// KV heads (GQA groups).
    pub num_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Maximum context length in tokens.
    pub max_position_embeddings: usize,
    /// The LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have a bias.
    pub qkv_bias: bool,
    /// o projection has a bias.
    pub o_bias: bool,
    /// q/k normalisation.
    pub qk_norm: QkNorm,
    /// OLMoE `clip_qkv`: q, k, v clamped to `[-c, c]`.
    pub clip_qkv: Option<f32>,
    /// Sliding-window attention width, when the model uses one.
    pub sliding_window: Option<usize>,
    /// Mixture-of-experts settings (`None` for dense models).
    pub moe: Option<MoeConfig>,
    /// Stored dtype named by the config (`torch_dtype` / `dtype`), if any.
    pub dtype: Option<String>,
    /// BOS token id.
    pub bos_token_id: Option<u32>,
    /// EOS token ids (a config may give one or a list).
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Whether layer `i` has a mixture-of-experts block (else a dense MLP).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        match &self.moe {
            None => false,
            Some(m) => {
                m.num_experts > 0
                    && !m.mlp_only_layers.contains(&i)
                    && (i + 1).is_multiple_of(m.decoder_sparse_step.max(1))
            }
        }
    }

    /// Reads and normalises `path` (a `config.json`).
    ///
    /// Errors: unreadable file, invalid JSON, unknown architecture, missing or ill-typed
    /// fields, unsupported `rope_scaling` type.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.into(),
            msg: format!("invalid JSON: {e}"),
        })?;
        Self::from_json(&v, path)
    }

    /// Normalises an already parsed config; `path` is used in error messages.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let c = Cfg {
            v,
            path: path.to_path_buf(),
        };
        let arch_name = match v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
        {
            Some(a) => a.to_string(),
            None => {
                return Err(
                    c.err("missing 'architectures' (expected e.g. [\"MixtralForCausalLM\"])")
                )
            }
        };
        let arch = Arch::ALL
            .iter()
            .find(|(_, n)| *n == arch_name)
            .map(|(a, _)| *a)
            .ok_or_else(|| Error::UnknownArchitecture {
                path: path.into(),
                arch: arch_name.clone(),
                supported: Arch::ALL
                    .iter()
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;

        let hidden_size = c.usize("hidden_size")?;
        let num_heads = c.usize("num_attention_heads")?;
        if num_heads == 0 || hidden_size == 0 {
            return Err(c.err("hidden_size and num_attention_heads must be positive"));
        }
        let num_kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(c.err(&format!(
                "num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        let head_dim = c.opt_usize("head_dim")?.unwrap_or(hidden_size / num_heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(c.err(&format!(
                "head_dim must be even and positive, got {head_dim}"
            )));
        }
        if let Some(f) = v.get("partial_rotary_factor").and_then(Value::as_f64) {
            if f != 1.0 {
                return Err(Error::Unsupported(format!(
                    "{}: partial_rotary_factor {f}",
                    path.display()
                )));
            }
        }
        let (rope_theta, rope_scaling) = c.rope()?;

        let moe = match arch {
            Arch::Mixtral => Some(MoeConfig {
                num_experts: c.num_experts()?,
                top_k: c.usize("num_experts_per_tok")?,
                expert_intermediate_size: c.usize("intermediate_size")?,
                norm_topk_prob: true,
                shared_expert_intermediate_size: None,
                decoder_sparse_step: 1,
                mlp_only_layers: vec![],
            }),
            Arch::Qwen2Moe | Arch::Qwen3Moe | Arch::Olmoe => Some(MoeConfig {
                num_experts: c.num_experts()?,
                top_k: c.usize("num_experts_per_tok")?,
                expert_intermediate_size: match arch {
                    Arch::Olmoe => c.usize("intermediate_size")?,
                    _ => c.usize("moe_intermediate_size")?,
                },
                norm_topk_prob: c.opt_bool("norm_topk_prob")?.unwrap_or(false),
                shared_expert_intermediate_size: match arch {
                    Arch::Qwen2Moe => c
                        .opt_usize("shared_expert_intermediate_size")?
                        .filter(|&s| s > 0),
                    _ => None,
                },
                decoder_sparse_step: c.opt_usize("decoder_sparse_step")?.unwrap_or(1).max(1),
                mlp_only_layers: c.usize_list("mlp_only_layers")?,
            }),
            _ => None,
        };
        if let Some(m) = &moe {
            if m.top_k == 0 || m.top_k > m.num_experts {
                return Err(c.err(&format!(
                    "num_experts_per_tok ({}) must be in 1..={} (the number of experts)",
                    m.top_k, m.num_experts
                )));
            }
        }

        let attention_bias = c.opt_bool("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 | Arch::Qwen2Moe => (true, false),
            Arch::Mixtral => (false, false),
            _ => (attention_bias, attention_bias),
        };
        let qk_norm = match arch {
            Arch::Qwen3 | Arch::Qwen3Moe => QkNorm::PerHead,
            Arch::Olmoe => QkNorm::Full,
            _ => QkNorm::None,
        };
        let sliding_window = match arch {
            Arch::Mistral | Arch::Mixtral => c.opt_usize("sliding_window")?,
            Arch::Qwen2 | Arch::Qwen2Moe | Arch::Qwen3 | Arch::Qwen3Moe => {
                if c.opt_bool("use_sliding_window")?.unwrap_or(false) {
                    c.opt_usize("sliding_window")?
                } else {
                    None
                }
            }
            _ => None,
        };
        let intermediate_size = match arch {
            Arch::Mixtral | Arch::Olmoe => 0,
            _ => c.opt_usize("intermediate_size")?.unwrap_or(0),
        };

        Ok(ModelConfig {
            arch,
            vocab_size: c.usize("vocab_size")?,
            hidden_size,
            intermediate_size,
            num_layers: c.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: c.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            tie_word_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            qk_norm,
            clip_qkv: c.opt_f64("clip_qkv")?.map(|x| x as f32),
            sliding_window,
            moe,
            dtype: v
                .get("dtype")
                .or_else(|| v.get("torch_dtype"))
                .and_then(Value::as_str)
                .map(str::to_string),
            bos_token_id: c.opt_usize("bos_token_id")?.map(|x| x as u32),
            eos_token_ids: c.id_list("eos_token_id")?,
        })
    }
}

/// Typed accessors over a JSON object that name the file and key in errors.
pub(crate) struct Cfg<'a> {
    pub v: &'a Value,
    pub path: PathBuf,
}

impl Cfg<'_> {
    pub fn err(&self, msg: &str) -> Error {
        Error::Config {
            path: self.path.clone(),
            msg: msg.to_string(),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.v.get(key).filter(|x| !x.is_null())
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.err(&format!("'{key}' must be a non-negative integer, got {x}"))
            }),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(&format!("missing required field '{key}'")))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(&format!("'{key}' must be a number, got {x}"))),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(&format!("'{key}' must be true or false, got {x}"))),
        }
    }

    fn usize_list(&self, key: &str) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|n| n as usize)
                        .ok_or_else(|| self.err(&format!("'{key}' must hold integers, got {x}")))
                })
                .collect(),
            Some(x) => Err(self.err(&format!("'{key}' must be a list of integers, got {x}"))),
        }
    }

    /// Routed experts: `num_local_experts` (Mixtral; transformers 5 for every MoE) or
    /// `num_experts` (Qwen-MoE and OLMoE in transformers 4).
    fn num_experts(&self) -> Result<usize> {
        match self.opt_usize("num_local_experts")? {
            Some(n) => Ok(n),
            None => self.opt_usize("num_experts")?.ok_or_else(|| {
                self.err("missing required field 'num_local_experts' (or 'num_experts')")
            }),
        }
    }

    /// An id or a list of ids (`eos_token_id` may be either).
    pub fn id_list(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(_)) => Ok(self
                .usize_list(key)?
                .into_iter()
                .map(|x| x as u32)
                .collect()),
            Some(x) => x.as_u64().map(|n| vec![n as u32]).ok_or_else(|| {
                self.err(&format!("'{key}' must be an id or a list of ids, got {x}"))
            }),
        }
    }

    /// RoPE base and scaling from either `rope_parameters` (5.x) or `rope_theta` +
    /// `rope_scaling` (4.x).
    fn rope(&self) -> Result<(f32, RopeScaling)> {
        let params = self.get("rope_parameters");
        let scaling = params.or_else(|| self.get("rope_scaling"));
        let theta = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(self.opt_f64("rope_theta")?)
            .unwrap_or(10000.0) as f32;
        let Some(s) = scaling else {
            return Ok((theta, RopeScaling::Default));
        };
        let sc = Cfg {
            v: s,
            path: self.path.clone(),
        };
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let f = |k: &str| -> Result<f32> {
            sc.opt_f64(k)?
                .map(|x| x as f32)
                .ok_or_else(|| self.err(&format!("rope scaling '{kind}' needs '{k}'")))
        };
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: f("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_max_position_embeddings: f("original_max_position_embeddings")?,
            },
            other => {
                return Err(Error::Unsupported(format!(
                    "{}: rope scaling type '{other}' (supported: default, linear, llama3)",
                    self.path.display()
                )))
            }
        };
        Ok((theta, scaling))
    }
}
