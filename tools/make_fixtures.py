#!/usr/bin/env python3
"""Generate tiny random Hugging Face checkpoints + transformers reference outputs.

Usage:
    pip install -r tools/requirements.txt
    python tools/make_fixtures.py --out tests/fixtures [--seed 0] [--only NAME ...]

For every fixture a directory ``<out>/<name>/`` is written in exactly the on-disk
format ``save_pretrained`` produces (config.json, generation_config.json,
model.safetensors or model-0000i-of-0000n.safetensors + model.safetensors.index.json,
tokenizer.json, tokenizer_config.json) plus

* ``reference.safetensors`` -- input ids, logits, greedy continuations, router choices
* ``reference.json``        -- prompts, versions, shapes, how the outputs were produced

All reference outputs are computed in float32 by the transformers model *re-loaded
from the directory that was just written* (so they describe the files on disk).

Everything is deterministic: fixed seeds, single-threaded torch, a tokenizer trained
on a fixed corpus (docstrings of Python standard-library modules, PSF licence).
No network access is needed (HF_HUB_OFFLINE is forced).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import math
import os
import platform
import re
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

transformers.logging.set_verbosity_error()
try:
    transformers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

PROMPT_A = "Open the file for reading and return it."
PROMPT_B = "Café ☕"

VOCAB_SIZE = 384
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_end|>"]  # ids 0, 1, 2, 3
UNK_ID, BOS_ID, EOS_ID, IM_END_ID = 0, 1, 2, 3
MAX_POS = 256
N_GREEDY = 32

# thresholds used to pick a weight seed whose reference outputs are numerically robust
MIN_GREEDY_MARGIN = 1e-2   # top1 - top2 logit gap at every greedy step (f32 reference)
MIN_ROUTER_GAP = 1e-3      # prob gap between k-th and (k+1)-th expert, every MoE layer/token
MAX_SEED_ATTEMPTS = 64

# Python standard-library modules whose docstrings form the tokenizer training corpus.
CORPUS_MODULES = [
    "abc", "argparse", "base64", "bisect", "calendar", "collections", "contextlib", "copy",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "enum", "fractions", "functools",
    "glob", "heapq", "hashlib", "inspect", "io", "itertools", "json", "logging", "math",
    "operator", "os", "pathlib", "pickle", "queue", "random", "re", "shutil", "socket",
    "statistics", "string", "subprocess", "tempfile", "textwrap", "threading", "time",
    "typing", "unittest", "urllib.parse", "uuid", "warnings", "weakref", "zipfile",
]


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------

def corpus_texts() -> list[str]:
    """Docstrings of a fixed list of stdlib modules and their public members (PSF licence)."""
    texts: list[str] = []
    for name in CORPUS_MODULES:
        mod = importlib.import_module(name)
        doc = inspect.getdoc(mod)
        if doc:
            texts.append(doc)
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr)
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            doc = inspect.getdoc(obj)
            if doc:
                texts.append(doc)
    return texts


def train_base_tokenizer() -> tuple[Tokenizer, dict]:
    texts = corpus_texts()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    info = {
        "corpus": "docstrings of Python standard-library modules (PSF licence)",
        "corpus_modules": CORPUS_MODULES,
        "corpus_docstrings": len(texts),
        "corpus_chars": sum(len(t) for t in texts),
        "corpus_sha256": hashlib.sha256("\x00".join(texts).encode()).hexdigest(),
        "python_version": platform.python_version(),
    }
    return tok, info


def make_flavour(base: Tokenizer, flavour: str) -> Tokenizer:
    tok = Tokenizer.from_str(base.to_str())
    if flavour == "llama":
        # Llama/Mixtral style: BOS prepended by the post-processor.
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A",
            pair="<s> $A <s> $B",
            special_tokens=[("<s>", BOS_ID)],
        )
    elif flavour == "qwen":
        # Qwen style: no BOS, plain byte-level post-processor (as in Qwen2 tokenizer.json).
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        raise ValueError(flavour)
    return tok


def save_tokenizer(base: Tokenizer, flavour: str, out_dir: Path) -> None:
    tok = make_flavour(base, flavour)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MAX_POS,
    )
    wrapped.save_pretrained(str(out_dir))
    # transformers 5 writes tokenizer_class "TokenizersBackend", a class transformers 4.x does
    # not know; "PreTrainedTokenizerFast" loads in both 4.x and 5.x.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json(cfg_path, cfg)


# --------------------------------------------------------------------------------------
# Fixture specifications
# --------------------------------------------------------------------------------------

@dataclass
class Spec:
    name: str
    cls_name: str
    config_cls_name: str
    config: dict[str, Any]
    flavour: str = "llama"
    description: str = ""
    storage_dtype: str = "float32"     # dtype written to disk
    config_style: str = "v5"           # "v5": as transformers 5 writes it; "v4": rewritten
    max_shard_size: str | None = None
    generation_eos: Any = None         # overrides generation_config.eos_token_id if set
    lm_gain: float = 3.0               # std of lm_head = lm_gain / sqrt(hidden)
    embed_std: float = 1.0
    bias_std: float = 0.3              # std of all biases (qkv bias)
    o_gain: float = 1.0                # gain on attention o_proj
    down_gain: float = 1.0             # gain on MLP / expert down_proj
    final_norm_scale: float = 1.0      # multiplies the final norm weights (tied-embedding models)
    extra: dict[str, Any] = field(default_factory=dict)


COMMON = dict(
    vocab_size=VOCAB_SIZE,
    max_position_embeddings=MAX_POS,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=None,
)

SPECS: list[Spec] = [
    Spec(
        name="mixtral",
        cls_name="MixtralForCausalLM",
        config_cls_name="MixtralConfig",
        description="Mixtral 8 experts top-2, GQA 4q/2kv, f32, single model.safetensors, "
        "config.json rewritten in transformers-4.x style (top-level rope_theta, torch_dtype)",
        config_style="v4",
        config=dict(
            COMMON,
            hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2,
            num_local_experts=8, num_experts_per_tok=2,
            rms_norm_eps=1e-2, rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
            sliding_window=None, tie_word_embeddings=False,
        ),
    ),
    Spec(
        name="mixtral_sharded",
        cls_name="MixtralForCausalLM",
        config_cls_name="MixtralConfig",
        description="Mixtral 8 experts top-2, MQA 4q/1kv, intermediate 32, f32, sharded into 3 "
        "model-0000i-of-0000n.safetensors + index; config.json as transformers 5 writes it "
        "(rope_parameters, dtype)",
        max_shard_size="150KB",
        config=dict(
            COMMON,
            hidden_size=32, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1,
            num_local_experts=8, num_experts_per_tok=2,
            rms_norm_eps=2e-2, rope_parameters={"rope_type": "default", "rope_theta": 20000.0},
            sliding_window=None, tie_word_embeddings=False,
        ),
    ),
    Spec(
        name="mixtral_bf16",
        cls_name="MixtralForCausalLM",
        config_cls_name="MixtralConfig",
        description="Mixtral 8 experts top-2 stored in bfloat16; reference computed in float32 "
        "from the bf16-rounded weights",
        storage_dtype="bfloat16",
        config=dict(
            COMMON,
            hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2,
            num_local_experts=8, num_experts_per_tok=2,
            rms_norm_eps=1e-2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            sliding_window=None, tie_word_embeddings=False,
        ),
    ),
    Spec(
        name="qwen2_moe",
        cls_name="Qwen2MoeForCausalLM",
        config_cls_name="Qwen2MoeConfig",
        flavour="qwen",
        description="Qwen2-MoE: qkv bias, 8 experts top-2 with norm_topk_prob=false, shared expert "
        "with sigmoid shared_expert_gate, 3 layers with mlp_only_layers=[1] (layer 1 is a dense "
        "MLP, layers 0 and 2 are MoE); generation_config eos_token_id is a list [2, 3]",
        generation_eos=[EOS_ID, IM_END_ID],
        config=dict(
            COMMON,
            hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
            shared_expert_intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=4,
            num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
            decoder_sparse_step=1, mlp_only_layers=[1],
            qkv_bias=True, use_sliding_window=False,
            rms_norm_eps=1e-2, rope_parameters={"rope_type": "default", "rope_theta": 25000.0},
            tie_word_embeddings=False,
        ),
    ),
    Spec(
        name="qwen3_moe",
        cls_name="Qwen3MoeForCausalLM",
        config_cls_name="Qwen3MoeConfig",
        flavour="qwen",
        description="Qwen3-MoE: explicit head_dim=16 != hidden/heads=8, per-head q_norm/k_norm, "
        "8 experts top-4 with norm_topk_prob=true, GQA 4q/2kv",
        config=dict(
            COMMON,
            hidden_size=32, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            num_experts=8, num_experts_per_tok=4, norm_topk_prob=True,
            decoder_sparse_step=1, mlp_only_layers=[],
            attention_bias=False, use_sliding_window=False,
            rms_norm_eps=1e-2, rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
            tie_word_embeddings=False,
        ),
    ),
    Spec(
        name="olmoe",
        cls_name="OlmoeForCausalLM",
        config_cls_name="OlmoeConfig",
        description="OLMoE: q_norm/k_norm over the whole q/k projection (not per head), "
        "8 experts top-2, norm_topk_prob=false, untied embeddings",
        config=dict(
            COMMON,
            hidden_size=32, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4,
            num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
            clip_qkv=None, attention_bias=False,
            rms_norm_eps=1e-2, rope_parameters={"rope_type": "default", "rope_theta": 8000.0},
            tie_word_embeddings=False,
        ),
    ),
    Spec(
        name="llama",
        cls_name="LlamaForCausalLM",
        config_cls_name="LlamaConfig",
        description="Llama dense, GQA 4q/2kv, tied embeddings, rope_scaling llama3 "
        "(factor 4, low 1, high 4, original_max_position_embeddings 64: at head_dim 16 one "
        "frequency is kept, one is smoothed, six are divided by the factor); config.json "
        "rewritten in transformers-4.x style (rope_scaling + top-level rope_theta, torch_dtype) "
        "like real Llama-3.1 checkpoints",
        config_style="v4",
        embed_std=0.1,
        o_gain=0.5,
        down_gain=4.0,
        final_norm_scale=4.0,
        config=dict(
            COMMON,
            hidden_size=64, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2,
            rms_norm_eps=1e-2,
            rope_parameters={
                "rope_type": "llama3", "rope_theta": 500000.0, "factor": 4.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            attention_bias=False, mlp_bias=False, tie_word_embeddings=True,
        ),
    ),
    Spec(
        name="mistral",
        cls_name="MistralForCausalLM",
        config_cls_name="MistralConfig",
        description="Mistral dense, MQA 4q/1kv, head_dim 12, linear RoPE scaling factor 2.0 "
        "(transformers-5 rope_parameters), sliding_window null",
        config=dict(
            COMMON,
            hidden_size=48, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1,
            rms_norm_eps=1e-2,
            rope_parameters={"rope_type": "linear", "rope_theta": 20000.0, "factor": 2.0},
            sliding_window=None, tie_word_embeddings=False,
        ),
    ),
    Spec(
        name="qwen2",
        cls_name="Qwen2ForCausalLM",
        config_cls_name="Qwen2Config",
        flavour="qwen",
        description="Qwen2 dense, qkv bias, GQA 6q/2kv (head_dim 8), tied embeddings",
        embed_std=0.2,
        o_gain=0.5,
        down_gain=4.0,
        final_norm_scale=3.0,
        bias_std=0.1,
        config=dict(
            COMMON,
            hidden_size=48, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=6, num_key_value_heads=2,
            rms_norm_eps=1e-2, rope_parameters={"rope_type": "default", "rope_theta": 30000.0},
            use_sliding_window=False, tie_word_embeddings=True,
        ),
    ),
    Spec(
        name="qwen3",
        cls_name="Qwen3ForCausalLM",
        config_cls_name="Qwen3Config",
        flavour="qwen",
        description="Qwen3 dense, per-head q_norm/k_norm, explicit head_dim=16 != hidden/heads=12, "
        "GQA 4q/2kv, untied embeddings",
        config=dict(
            COMMON,
            hidden_size=48, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            rms_norm_eps=1e-2, rope_parameters={"rope_type": "default", "rope_theta": 15000.0},
            attention_bias=False, use_sliding_window=False, tie_word_embeddings=False,
        ),
    ),
]
SPEC_BY_NAME = {s.name: s for s in SPECS}


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def fixture_seed(base_seed: int, name: str, attempt: int) -> int:
    return (base_seed * 1_000_003 + zlib.crc32(name.encode()) + attempt * 7919) % (2**31)


def is_moe(spec: Spec) -> bool:
    return any(k in spec.config for k in ("num_local_experts", "num_experts"))


def build_model(spec: Spec):
    cfg_cls = getattr(transformers, spec.config_cls_name)
    cls = getattr(transformers, spec.cls_name)
    kwargs = dict(spec.config)
    kwargs["rope_parameters"] = dict(kwargs["rope_parameters"])
    extra = {"attn_implementation": "eager"}
    if is_moe(spec):
        extra["experts_implementation"] = "eager"
    config = cfg_cls(**kwargs, **extra)
    model = cls(config).to(torch.float32).eval()
    return model


@torch.no_grad()
def reinit_(model, gen: torch.Generator, spec: Spec) -> None:
    """Re-initialise every parameter so that activations stay O(1) but logits are peaked.

    * norm weights: uniform [0.6, 1.4]  (not all ones); the final norm is additionally scaled
      by ``final_norm_scale`` (tied models: small embeddings, so the logit spread comes from it)
    * biases: normal std 0.3            (not all zeros)
    * embeddings: normal std ``embed_std``
    * lm_head: normal std lm_gain / sqrt(hidden)
    * every other matrix / 3-D expert tensor: normal std gain / sqrt(fan_in), fan_in = last dim,
      gain 1 except routers (2) and o_proj / down_proj (``o_gain`` / ``down_gain``).
      Tied-embedding models need care: large embeddings make the tied lm_head predict the
      input token again; tiny embeddings + strong attention make all positions alike (few
      "hub" tokens win every argmax).  Small embeddings, weak o_proj, strong MLP and a scaled
      final norm give diverse, non-repeating greedy continuations.
    """
    hidden = model.config.hidden_size
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.ndim == 1:
            if name.endswith("bias"):
                val = torch.randn(p.shape, generator=gen) * spec.bias_std
            else:
                val = 0.6 + 0.8 * torch.rand(p.shape, generator=gen)
                if name == "model.norm.weight":
                    val = val * spec.final_norm_scale
        elif "embed_tokens" in name:
            val = torch.randn(p.shape, generator=gen) * spec.embed_std
        elif name.startswith("lm_head"):
            val = torch.randn(p.shape, generator=gen) * (spec.lm_gain / math.sqrt(hidden))
        else:
            fan_in = p.shape[-1]
            gain = 1.0
            if name.endswith("gate.weight") and p.ndim == 2 and p.shape[0] > 1:
                gain = 2.0  # router: decisive but not one-hot routing
            elif name.endswith("o_proj.weight"):
                gain = spec.o_gain
            elif name.endswith(("down_proj.weight", "down_proj")):
                gain = spec.down_gain
            val = torch.randn(p.shape, generator=gen) * (gain / math.sqrt(fan_in))
        p.copy_(val.to(p.dtype))


def rewrite_config_v4(path: Path) -> None:
    """Rewrite a transformers-5 config.json in the transformers-4.x style."""
    cfg = json.loads(path.read_text())
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    rope_type = rp.get("rope_type", "default")
    if rope_type != "default":
        cfg["rope_scaling"] = rp
    cfg["torch_dtype"] = cfg.pop("dtype")
    if cfg.get("head_dim", 0) is None:
        del cfg["head_dim"]
    write_json(path, cfg)


def safetensors_files(d: Path) -> list[Path]:
    return sorted(p for p in d.glob("model*.safetensors"))


def saved_tensor_listing(d: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in safetensors_files(d):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                sl = sf.get_slice(k)
                out[k] = {"file": f.name, "shape": list(sl.get_shape()), "dtype": sl.get_dtype()}
    return out


def load_saved_tensors(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in safetensors_files(d):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                out[k] = sf.get_tensor(k)
    return out


def check_expert_layout(spec: Spec, model, d: Path) -> None:
    """Verify the on-disk tensors are in the per-expert Hub layout and match the fused
    in-memory tensors of transformers 5 (gate_up_proj = cat(gate, up), down_proj)."""
    saved = load_saved_tensors(d)
    names = list(saved)
    assert not any("gate_up_proj" in n for n in names), "fused expert tensor written to disk"
    n_exp = model.config.num_local_experts if spec.config_cls_name == "MixtralConfig" else model.config.num_experts
    for li, layer in enumerate(model.model.layers):
        experts = getattr(layer.mlp, "experts", None)
        if experts is None:
            continue
        gu = experts.gate_up_proj.detach()
        dn = experts.down_proj.detach()
        inter = gu.shape[1] // 2
        for e in range(n_exp):
            if spec.config_cls_name == "MixtralConfig":
                p = f"model.layers.{li}.block_sparse_moe.experts.{e}."
                g, u, dw = saved[p + "w1.weight"], saved[p + "w3.weight"], saved[p + "w2.weight"]
            else:
                p = f"model.layers.{li}.mlp.experts.{e}."
                g, u, dw = saved[p + "gate_proj.weight"], saved[p + "up_proj.weight"], saved[p + "down_proj.weight"]
            assert torch.equal(g, gu[e, :inter].to(g.dtype)), p
            assert torch.equal(u, gu[e, inter:].to(u.dtype)), p
            assert torch.equal(dw, dn[e].to(dw.dtype)), p


class RouterRecorder:
    """Forward hooks on every ``*TopKRouter`` module: captures (router_logits, weights, indices)."""

    def __init__(self, model):
        self.records: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.handles = []
        self.enabled = False
        for name, mod in model.named_modules():
            if type(mod).__name__.endswith("TopKRouter"):
                m = re.search(r"layers\.(\d+)\.", name)
                assert m, name
                self.handles.append(mod.register_forward_hook(self._hook(int(m.group(1)))))

    def _hook(self, layer: int):
        def fn(_mod, _inp, out):
            if self.enabled:
                logits, weights, idx = out
                self.records[layer] = (logits.detach().clone(), weights.detach().clone(), idx.detach().clone())
        return fn

    def remove(self):
        for h in self.handles:
            h.remove()


def tokenizer_encode(tok, text: str) -> list[int]:
    return list(tok(text)["input_ids"])


# --------------------------------------------------------------------------------------
# Reference computation
# --------------------------------------------------------------------------------------

@torch.no_grad()
def greedy_manual(model, ids: list[int], n: int) -> tuple[list[int], float]:
    """Greedy decoding by full re-computation each step (no KV cache); returns min top-2 margin."""
    seq = list(ids)
    out = []
    min_margin = float("inf")
    for _ in range(n):
        logits = model(torch.tensor([seq])).logits[0, -1].float()
        top2 = torch.topk(logits, 2).values
        min_margin = min(min_margin, float(top2[0] - top2[1]))
        nxt = int(torch.argmax(logits))
        out.append(nxt)
        seq.append(nxt)
    return out, min_margin


@torch.no_grad()
def greedy_generate(model, ids: list[int], n: int) -> list[int]:
    """model.generate greedy with EOS disabled (generation_config.eos_token_id=None)."""
    inp = torch.tensor([ids])
    res = model.generate(
        inp,
        attention_mask=torch.ones_like(inp),
        do_sample=False,
        max_new_tokens=n,
        eos_token_id=None,
        pad_token_id=UNK_ID,
    )
    new = res[0, len(ids):].tolist()
    assert len(new) == n, (len(new), n)
    return new


@torch.no_grad()
def greedy_generate_min_new(model, ids: list[int], n: int, eos) -> list[int]:
    """The brief's formulation: min_new_tokens=n with the real EOS ids (which masks EOS logits)."""
    inp = torch.tensor([ids])
    res = model.generate(
        inp,
        attention_mask=torch.ones_like(inp),
        do_sample=False,
        max_new_tokens=n,
        min_new_tokens=n,
        eos_token_id=eos,
        pad_token_id=UNK_ID,
    )
    return res[0, len(ids):].tolist()


def compute_reference(spec: Spec, d: Path, tok) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    cls = getattr(transformers, spec.cls_name)
    load_kwargs = dict(dtype=torch.float32, attn_implementation="eager")
    if is_moe(spec):
        load_kwargs["experts_implementation"] = "eager"
    model = cls.from_pretrained(str(d), **load_kwargs).eval()
    saved_eos = model.generation_config.eos_token_id
    # Disable EOS for generation (in memory only; the saved generation_config.json is untouched).
    model.generation_config.eos_token_id = None
    for p in model.parameters():
        assert p.dtype == torch.float32

    ids_a = tokenizer_encode(tok, PROMPT_A)
    ids_b = tokenizer_encode(tok, PROMPT_B)

    rec = RouterRecorder(model) if is_moe(spec) else None
    with torch.no_grad():
        if rec:
            rec.enabled = True
        logits_a = model(torch.tensor([ids_a]), attention_mask=torch.ones(1, len(ids_a), dtype=torch.long)).logits[0].float()
        if rec:
            rec.enabled = False
        logits_b = model(torch.tensor([ids_b]), attention_mask=torch.ones(1, len(ids_b), dtype=torch.long)).logits[0].float()

    greedy_a = greedy_generate(model, ids_a, N_GREEDY)
    greedy_b = greedy_generate(model, ids_b, N_GREEDY)
    man_a, margin_a = greedy_manual(model, ids_a, N_GREEDY)
    man_b, margin_b = greedy_manual(model, ids_b, N_GREEDY)
    assert greedy_a == man_a, ("generate (KV cache) != full recompute", greedy_a, man_a)
    assert greedy_b == man_b, ("generate (KV cache) != full recompute", greedy_b, man_b)

    eos_ids = saved_eos if isinstance(saved_eos, list) else [saved_eos]
    alt_a = greedy_generate_min_new(model, ids_a, N_GREEDY, eos_ids)
    alt_b = greedy_generate_min_new(model, ids_b, N_GREEDY, eos_ids)

    tensors: dict[str, torch.Tensor] = {
        "input_ids": torch.tensor(ids_a, dtype=torch.int64),
        "logits": logits_a.contiguous(),
        "input_ids_b": torch.tensor(ids_b, dtype=torch.int64),
        "logits_b": logits_b.contiguous(),
        "greedy_ids": torch.tensor(greedy_a, dtype=torch.int64),
        "greedy_ids_b": torch.tensor(greedy_b, dtype=torch.int64),
    }
    info: dict[str, Any] = {
        "greedy_min_top2_margin": min(margin_a, margin_b),
        "greedy_contains_eos": any(t in eos_ids for t in greedy_a + greedy_b),
        "greedy_equals_min_new_tokens_variant": alt_a == greedy_a and alt_b == greedy_b,
        "generation_eos_token_id": saved_eos,
    }

    if rec:
        layers = sorted(rec.records)
        top_k = model.config.num_experts_per_tok
        topk = torch.stack([rec.records[l][2] for l in layers]).to(torch.int64)
        weights = torch.stack([rec.records[l][1] for l in layers]).float()
        assert topk.shape == (len(layers), len(ids_a), top_k), topk.shape
        # gap between the k-th and (k+1)-th routing probability (robustness of the top-k choice)
        gaps = []
        for l in layers:
            probs = torch.softmax(rec.records[l][0].float(), dim=-1)
            srt = torch.sort(probs, dim=-1, descending=True).values
            gaps.append(float((srt[:, top_k - 1] - srt[:, top_k]).min()))
            # top-k order must be by descending weight (as torch.topk returns it)
            w = rec.records[l][1]
            assert torch.all(w[:, :-1] >= w[:, 1:]), "router weights not in descending order"
        tensors["router_topk"] = topk.contiguous()
        tensors["router_weights"] = weights.contiguous()
        tensors["router_layers"] = torch.tensor(layers, dtype=torch.int64)
        info["router_min_topk_gap"] = min(gaps)
        info["router_layers"] = layers
        info["router_top_k"] = top_k
        info["router_distinct_experts"] = int(torch.unique(topk).numel())
        rec.remove()

    info["ids_a"] = ids_a
    info["ids_b"] = ids_b
    info["greedy_text"] = tok.decode(greedy_a, skip_special_tokens=False)
    info["greedy_text_b"] = tok.decode(greedy_b, skip_special_tokens=False)
    return tensors, info


def sanity_problems(spec: Spec, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> list[str]:
    probs = []
    for key in ("logits", "logits_b"):
        lg = tensors[key]
        if not torch.isfinite(lg).all():
            probs.append(f"{key} not finite")
        std = float(lg.std(dim=-1).mean())
        if std <= 1.0:
            probs.append(f"{key} std {std:.3f} <= 1")
        n_argmax = int(torch.unique(lg.argmax(dim=-1)).numel())
        if n_argmax < max(2, lg.shape[0] // 3):
            probs.append(f"{key} argmax barely varies ({n_argmax} distinct over {lg.shape[0]})")
    for key in ("greedy_ids", "greedy_ids_b"):
        n_distinct = int(torch.unique(tensors[key]).numel())
        if n_distinct < 8:
            probs.append(f"{key} has only {n_distinct} distinct tokens")
    if info["greedy_min_top2_margin"] < MIN_GREEDY_MARGIN:
        probs.append(f"greedy margin {info['greedy_min_top2_margin']:.2e} < {MIN_GREEDY_MARGIN}")
    if info["greedy_contains_eos"]:
        probs.append("greedy continuation contains an EOS id")
    if not info["greedy_equals_min_new_tokens_variant"]:
        probs.append("greedy differs from min_new_tokens variant")
    if "router_min_topk_gap" in info:
        if info["router_min_topk_gap"] < MIN_ROUTER_GAP:
            probs.append(f"router top-k gap {info['router_min_topk_gap']:.2e} < {MIN_ROUTER_GAP}")
        n_exp = spec.config.get("num_local_experts", spec.config.get("num_experts"))
        if info["router_distinct_experts"] < n_exp - 1:
            probs.append(f"only {info['router_distinct_experts']} experts ever selected")
    return probs


# --------------------------------------------------------------------------------------
# Main per-fixture driver
# --------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def write_fixture_once(spec: Spec, out: Path, base_tok: Tokenizer, seed: int):
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(spec)
    reinit_(model, gen, spec)

    gc = model.generation_config
    gc.bos_token_id = BOS_ID
    gc.eos_token_id = spec.generation_eos if spec.generation_eos is not None else EOS_ID
    gc.pad_token_id = None

    if spec.storage_dtype == "bfloat16":
        model = model.to(torch.bfloat16)
        model.config.dtype = torch.bfloat16
    save_kwargs = {}
    if spec.max_shard_size:
        save_kwargs["max_shard_size"] = spec.max_shard_size
    model.save_pretrained(str(out), **save_kwargs)
    save_tokenizer(base_tok, spec.flavour, out)
    if spec.config_style == "v4":
        rewrite_config_v4(out / "config.json")

    # ---- checks on what was written --------------------------------------------------
    files = safetensors_files(out)
    if spec.max_shard_size:
        assert len(files) >= 2 and (out / "model.safetensors.index.json").exists(), files
    else:
        assert [f.name for f in files] == ["model.safetensors"], files
    listing = saved_tensor_listing(out)
    want_dtype = {"float32": "F32", "bfloat16": "BF16"}[spec.storage_dtype]
    assert all(v["dtype"] == want_dtype for v in listing.values()), listing
    if is_moe(spec):
        check_expert_layout(spec, model, out)
    if spec.config.get("tie_word_embeddings"):
        assert "lm_head.weight" not in listing

    # reload and check that the round trip reproduces the in-memory model exactly
    cls = getattr(transformers, spec.cls_name)
    reload_kwargs = dict(dtype=torch.float32, attn_implementation="eager")
    if is_moe(spec):
        reload_kwargs["experts_implementation"] = "eager"
    reloaded = cls.from_pretrained(str(out), **reload_kwargs).eval()
    mem = dict(model.named_parameters())
    for n, p in reloaded.named_parameters():
        assert torch.equal(p.detach(), mem[n].detach().float()), f"round-trip mismatch in {n}"
    if spec.config_style == "v4":
        # the rewritten config must be interpreted identically (rope theta / scaling)
        assert torch.equal(reloaded.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq.float())
    if spec.config["rope_parameters"]["rope_type"] != "default":
        head_dim = spec.config.get("head_dim") or spec.config["hidden_size"] // spec.config["num_attention_heads"]
        theta = spec.config["rope_parameters"]["rope_theta"]
        plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        changed = ~torch.isclose(reloaded.model.rotary_emb.inv_freq, plain, rtol=1e-6)
        assert 0 < int(changed.sum()) , "rope scaling has no effect"
    if spec.storage_dtype == "float32":
        with torch.no_grad():
            x = torch.tensor([[BOS_ID, 10, 20, 30, 40]])
            assert torch.equal(model(x).logits, reloaded(x).logits)
    del reloaded

    # tokenizer round trip: transformers wrapper == raw tokenizers flavour
    tok = AutoTokenizer.from_pretrained(str(out))
    raw = make_flavour(base_tok, spec.flavour)
    for text in (PROMPT_A, PROMPT_B):
        assert tokenizer_encode(tok, text) == raw.encode(text).ids
        ids = tokenizer_encode(tok, text)
        assert tok.decode(ids, skip_special_tokens=True) == text
    if spec.flavour == "llama":
        assert tokenizer_encode(tok, PROMPT_A)[0] == BOS_ID
    else:
        assert BOS_ID not in tokenizer_encode(tok, PROMPT_A)

    tensors, info = compute_reference(spec, out, tok)
    return tensors, info, listing


def make_fixture(spec: Spec, out_root: Path, base_tok: Tokenizer, tok_info: dict, base_seed: int) -> None:
    out = out_root / spec.name
    last_problems: list[str] = []
    for attempt in range(MAX_SEED_ATTEMPTS):
        seed = fixture_seed(base_seed, spec.name, attempt)
        tensors, info, listing = write_fixture_once(spec, out, base_tok, seed)
        problems = sanity_problems(spec, tensors, info)
        if not problems:
            break
        print(f"  [{spec.name}] seed attempt {attempt} rejected: {problems}")
        last_problems = problems
    else:
        raise RuntimeError(f"{spec.name}: no acceptable seed found: {last_problems}")

    save_file(tensors, str(out / "reference.safetensors"), metadata={"fixture": spec.name})

    cfg = json.loads((out / "config.json").read_text())
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    dtypes = {k: str(v.dtype).replace("torch.", "") for k, v in tensors.items()}
    ref = {
        "fixture": spec.name,
        "description": spec.description,
        "arch": cfg["architectures"][0],
        "model_type": cfg["model_type"],
        "dtype": spec.storage_dtype,
        "reference_compute_dtype": "float32",
        "reference_note": (
            "reference computed in float32 by transformers from the bf16-rounded weights "
            "(from_pretrained(dtype=float32) upcasts the stored bf16 tensors)"
            if spec.storage_dtype == "bfloat16"
            else "reference computed in float32 by transformers from the stored f32 weights"
        ),
        "config_style": spec.config_style,
        "sharded": bool(spec.max_shard_size),
        "weight_files": [f.name for f in safetensors_files(out)],
        "tokenizer_flavour": spec.flavour,
        "adds_bos": spec.flavour == "llama",
        "prompt_a": PROMPT_A,
        "prompt_b": PROMPT_B,
        "input_ids": info["ids_a"],
        "input_ids_b": info["ids_b"],
        "greedy_ids": tensors["greedy_ids"].tolist(),
        "greedy_ids_b": tensors["greedy_ids_b"].tolist(),
        "greedy_text": info["greedy_text"],
        "greedy_text_b": info["greedy_text_b"],
        "greedy_new_tokens": N_GREEDY,
        "eos_handling": (
            "greedy_ids = the 32 new tokens of model.generate(input_ids, do_sample=False, "
            "max_new_tokens=32) with model.generation_config.eos_token_id=None set in memory "
            "(EOS disabled: no stopping and no EOS-logit masking, i.e. plain argmax each step). "
            "Checked equal to (1) a no-cache full-recompute argmax loop and (2) generate with "
            "min_new_tokens=32 and the real eos ids; the continuation contains no eos id."
        ),
        "generation_eos_token_id": info["generation_eos_token_id"],
        "greedy_min_top2_logit_margin": info["greedy_min_top2_margin"],
        "shapes": shapes,
        "tensor_dtypes": dtypes,
        "seed": fixture_seed(base_seed, spec.name, attempt),
        "seed_attempt": attempt,
        "versions": versions(),
        "tokenizer": tok_info,
    }
    if is_moe(spec):
        ref["moe"] = {
            "router_layers": info["router_layers"],
            "top_k": info["router_top_k"],
            "num_experts": spec.config.get("num_local_experts", spec.config.get("num_experts")),
            "norm_topk_prob": spec.config.get("norm_topk_prob", True if spec.config_cls_name == "MixtralConfig" else None),
            "router_min_topk_prob_gap": info["router_min_topk_gap"],
            "distinct_experts_selected": info["router_distinct_experts"],
            "router_topk": "selected expert indices per MoE layer (router_layers) for prompt_a, "
            "in torch.topk order (descending routing weight)",
            "router_weights": "final per-token expert mixing weights (softmax over all experts in "
            "float32, top-k, renormalised to sum 1 iff the architecture does: "
            "mixtral always, qwen*_moe/olmoe iff norm_topk_prob)",
            "captured_via": "forward hooks on the *TopKRouter modules (model.layers.N.mlp.gate)",
        }
    write_json(out / "reference.json", ref)
    for f in out.iterdir():  # save_pretrained creates weight files with mode 0600
        f.chmod(0o644)

    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"{spec.name}: seed attempt {attempt}, {len(listing)} tensors in "
          f"{len(safetensors_files(out))} file(s), {total / 1024:.1f} KiB, "
          f"logits std {float(tensors['logits'].std(dim=-1).mean()):.2f}, "
          f"greedy margin {info['greedy_min_top2_margin']:.3g}"
          + (f", router gap {info['router_min_topk_gap']:.3g}" if "router_min_topk_gap" in info else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output directory (e.g. tests/fixtures)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(SPEC_BY_NAME),
                    help="generate only these fixtures")
    ap.add_argument("--list-tensors", action="store_true", help="print saved tensor names of each fixture")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    args.out.mkdir(parents=True, exist_ok=True)
    base_tok, tok_info = train_base_tokenizer()
    print(f"tokenizer: vocab {base_tok.get_vocab_size()}, corpus {tok_info['corpus_chars']} chars "
          f"from {tok_info['corpus_docstrings']} docstrings (python {tok_info['python_version']})")

    names = args.only or [s.name for s in SPECS]
    for name in names:
        make_fixture(SPEC_BY_NAME[name], args.out, base_tok, tok_info, args.seed)
        if args.list_tensors:
            for k, v in saved_tensor_listing(args.out / name).items():
                print(f"    {v['file']:<36} {k:<60} {v['dtype']} {v['shape']}")


if __name__ == "__main__":
    main()
