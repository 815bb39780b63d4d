#!/usr/bin/env python3
"""Train the bundled model pair of specmoe: a tiny Mixtral-architecture MoE *target* and a much
smaller dense Llama *draft* for speculative decoding, sharing one tokenizer.

Usage (CPU only, no network; the corpus comes from the Debian package python3.11-doc):

    apt-get install -y python3.11-doc
    pip install -r tools/requirements.txt
    nice -n 10 python tools/train_pair.py --out-dir models [--seed 0]

The defaults (fixed seed, fixed step counts 449 / 337, one torch thread) make a run
deterministic: two runs on the same package versions and CPU family give the same bits. It
takes ~20 min on 2 idle cores of a Cascade Lake Xeon and ~35 min when the cores are shared
with other work. One thread is the default because on a shared 2-core machine two OpenMP
threads are often *slower* than one (a descheduled thread stalls every parallel region;
measured 8-10 s vs 5-6 s per target step under load, 0.93 s vs 1.55 s on idle cores), and
because the thread count changes float reductions, i.e. the bits of the result.

The committed models/tiny-mixtral and models/tiny-draft come from a wall-time-sized run
(``--threads 1 --minutes-target 24 --minutes-draft 8.5``), which settled on the same 449 / 337
steps; because a time-sized run re-estimates the horizon of its LR schedule while it trains,
the default command reproduces them statistically, not bit for bit
(models/train_report.json records the run).

What it does, start to finish:

1. Corpus: the HTML of the Python 3.11 documentation (PSF licence) under
   /usr/share/doc/python3.11/html, converted to plain text with html.parser (only the
   ``role="main"`` body of each page; navigation, sidebars, "¶" links, index/search pages and
   the changelog are dropped). ~2 % of the bytes, whole pages, are held out for evaluation.
2. Tokenizer: byte-level BPE (``tokenizers``) trained on the training split, vocab 4096 with
   specials ``<unk>``=0, ``<s>``=1, ``</s>``=2; the post-processor prepends ``<s>`` (as
   Llama/Mixtral). Each document is encoded as ``<s> text </s>`` and the documents are
   concatenated into one stream from which random windows are drawn.
3. Target (``MixtralForCausalLM``, 8 experts, top-2) trained with AdamW, cosine LR with warmup,
   cross-entropy + Mixtral's load-balancing loss, experts_implementation "eager" (on this CPU
   it trains ~3x faster than "grouped_mm", whose CPU path is a slow fallback; "batched_mm"
   computes every expert for every token and ran out of memory). The draft is co-trained in
   the same steps by online distillation from the (detached) target logits mixed with the LM
   loss. torch.compile is not used (dynamic per-expert shapes; not shown to help here).
4. The trained target (rounded to bf16, as shipped) writes greedy continuations of random
   training-text prompts: the prefixes the draft meets in greedy speculative decoding
   (sequence-level distillation data, as in DistillSpec, Zhou et al. 2023).
5. Draft (``LlamaForCausalLM``) then distilled from the frozen target, alternating batches of
   corpus text and of the target's continuations: loss =
   alpha * T^2 * KL(target_T || draft_T) + (1 - alpha) * CE.
6. Export both in bf16 in the Hugging Face format (config.json, generation_config.json,
   model.safetensors with the per-expert Hub layout
   ``model.layers.{i}.block_sparse_moe.experts.{e}.w1/w2/w3.weight``, tokenizer.json,
   tokenizer_config.json), files mode 0644; layout, dtypes, identical tokenizer files and
   generation_config bos/eos are checked after writing.
7. Evaluate the *saved* checkpoints (reloaded in float32): held-out perplexity, teacher-forced
   greedy agreement of draft and target, simulated greedy speculative decoding on held-out
   prompts (mean tokens per target pass for k = 1..8), the mean number of distinct experts a
   block of n tokens routes to, and sample generations; everything is written to
   ``<out-dir>/train_report.json``. ``--eval-only`` re-runs just this step.

``--minutes-target`` / ``--minutes-draft`` (optionally with ``--threads auto``, which switches
between 1 and 2 threads by measured speed) size the step counts by wall time on a busy
machine instead; such runs are not bitwise reproducible and the report says so.

``--gen-seed`` (with ``--redistil-draft``) draws other generation prompts and another batch
order while keeping the corpus split of ``--seed``, for a further round from the shipped draft.

``--redistil-draft`` continues step 5 alone from the committed pair: the target in
``<out-dir>/tiny-mixtral`` stays frozen, the draft in ``<out-dir>/tiny-draft`` is the starting
point, the corpus split and the committed tokenizer are reused (nothing retrained but the
draft). It generates a fresh set of target continuations (``--gen-seqs``; ``--gen-prompt-min``
varies the prompt length), spends ``--gen-share`` of the steps on them, restarts AdamW and the
cosine schedule at ``--redistil-lr``, and writes only the draft, to ``--draft-out`` (default
/tmp/redistil/tiny-draft; never models/), with the committed draft's tokenizer files and
token_counts.json, plus a JSON report that evaluates the committed and the new draft with the
same code (step 7, and a faster check of the same simulation on 128 long and 128 short
held-out prompts, with the acceptance of speculative sampling at temperature 1). E.g.:

    nice -n 10 python tools/train_pair.py --redistil-draft --threads 1 --gen-seqs 2048 \\
        --gen-batch 128 --gen-prompt-min 4 --gen-share 0.75 --d-gen-batch 16 \\
        --redistil-lr 5e-4 --minutes-draft 19
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import math
import os
import platform
import re
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedTokenizerFast,
)

transformers.logging.set_verbosity_error()
try:
    transformers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

DOC_ROOT = Path("/usr/share/doc/python3.11/html")
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SAMPLE_PROMPTS = [
    "The Python interpreter",
    "To open a file for reading,",
    "A list comprehension",
]

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------

_BLOCK = {"p", "div", "pre", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd",
          "dl", "tr", "table", "section", "blockquote", "figure", "caption"}
_VOID = {"br", "hr", "img", "meta", "link", "input", "col", "wbr", "area", "base", "source"}


class _MainText(html.parser.HTMLParser):
    """Text of the ``role="main"`` element of a Sphinx page; drops scripts, styles, "¶"
    header links and navigation; keeps the whitespace of <pre> blocks verbatim."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.main_depth: int | None = None
        self.skip_depth: int | None = None
        self.pre = 0
        self.out: list[str] = []

    def _live(self) -> bool:
        return self.main_depth is not None and self.skip_depth is None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in _VOID:
            if tag in ("br", "hr") and self._live():
                self.out.append("\n")
            return
        self.stack.append(tag)
        depth = len(self.stack)
        if self.main_depth is None:
            if a.get("role") == "main":
                self.main_depth = depth
            return
        if self.skip_depth is None:
            cls = (a.get("class") or "").split()
            if (tag in ("script", "style") or "headerlink" in cls or "sphinxsidebar" in cls
                    or "related" in cls or a.get("role") == "navigation"):
                self.skip_depth = depth
        if tag == "pre":
            self.pre += 1
        if tag in _BLOCK and self._live():
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in _VOID or tag not in self.stack:
            return
        while self.stack:
            depth = len(self.stack)
            t = self.stack.pop()
            if t in _BLOCK and self._live():
                self.out.append("\n")
            if self.skip_depth == depth:
                self.skip_depth = None
            if self.main_depth == depth:
                self.main_depth = None
            if t == "pre" and self.pre:
                self.pre -= 1
            if t == tag:
                break

    def handle_data(self, data):
        if not self._live():
            return
        self.out.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(src: str) -> str:
    p = _MainText()
    p.feed(src)
    p.close()
    lines = []
    for line in "".join(p.out).split("\n"):
        line = line.rstrip()
        # a single leading space is an artifact of collapsing whitespace after a tag
        if line.startswith(" ") and not line.startswith("  "):
            line = line[1:]
        lines.append(line)
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text


_SKIP_PAGE = re.compile(r"^(genindex|py-modindex|search\.html|contents\.html|_)|^whatsnew/changelog")


def extract_corpus(root: Path) -> list[tuple[str, str]]:
    if not root.is_dir():
        sys.exit(f"error: {root} not found; install the Debian package python3.11-doc "
                 f"(apt-get install -y python3.11-doc) or pass --doc-root")
    docs = []
    for f in sorted(root.rglob("*.html")):
        rel = f.relative_to(root).as_posix()
        if _SKIP_PAGE.search(rel):
            continue
        text = html_to_text(f.read_text(encoding="utf-8", errors="replace"))
        if len(text) >= 200:
            docs.append((rel, text))
    return docs


def split_docs(docs: list[tuple[str, str]], seed: int, frac: float):
    """Hold out whole documents, in a seeded hash order, until `frac` of the bytes."""
    total = sum(len(t.encode()) for _, t in docs)
    order = sorted(docs, key=lambda d: zlib.crc32(f"{seed}:{d[0]}".encode()))
    held, held_bytes = [], 0
    max_doc = 0.01 * total  # keep very large pages (e.g. the full stdtypes page) in training
    for name, text in order:
        if held_bytes >= frac * total:
            break
        b = len(text.encode())
        if b > max_doc:
            continue
        held.append(name)
        held_bytes += b
    held_set = set(held)
    train = [d for d in docs if d[0] not in held_set]
    test = [d for d in docs if d[0] in held_set]
    return train, test


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------

def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    # Llama/Mixtral style: BOS prepended by the post-processor.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)])
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: Path, max_len: int) -> None:
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tok.to_str()),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=max_len)
    wrapped.save_pretrained(str(out_dir))
    # transformers 5 writes tokenizer_class "TokenizersBackend", unknown to transformers 4.x;
    # "PreTrainedTokenizerFast" loads in both.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json(cfg_path, cfg)


def encode_docs(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """`<s> doc </s>` for every document, concatenated (the post-processor adds the <s>)."""
    parts = []
    for enc in tok.encode_batch(texts):
        ids = enc.ids
        assert ids[0] == BOS_ID
        parts.append(np.asarray(ids + [EOS_ID], dtype=np.int32))
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------

def target_config(a, vocab: int) -> MixtralConfig:
    return MixtralConfig(
        vocab_size=vocab, hidden_size=a.t_hidden, intermediate_size=a.t_inter,
        num_hidden_layers=a.t_layers, num_attention_heads=a.t_heads,
        num_key_value_heads=a.t_kv_heads, num_local_experts=8, num_experts_per_tok=2,
        max_position_embeddings=a.ctx, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        sliding_window=None, tie_word_embeddings=False,
        router_aux_loss_coef=a.aux_coef, output_router_logits=False, router_jitter_noise=0.0,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=None,
        attn_implementation="sdpa", experts_implementation="eager")


def draft_config(a, vocab: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab, hidden_size=a.d_hidden, intermediate_size=a.d_inter,
        num_hidden_layers=a.d_layers, num_attention_heads=a.d_heads,
        num_key_value_heads=a.d_kv_heads, max_position_embeddings=a.ctx, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=False, mlp_bias=False, tie_word_embeddings=True,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=None,
        attn_implementation="sdpa")


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def decode_read_params(model, kind: str) -> dict[str, int]:
    """Parameters a batch-1 decode step reads (embedding: one row; MoE: top-k experts)."""
    cfg = model.config
    emb = cfg.vocab_size * cfg.hidden_size
    total = n_params(model)
    if kind == "target":
        per_expert = 3 * cfg.hidden_size * cfg.intermediate_size
        experts_all = cfg.num_hidden_layers * cfg.num_local_experts * per_expert
        experts_active = cfg.num_hidden_layers * cfg.num_experts_per_tok * per_expert
        dense_read = total - emb - experts_all  # attention, norms, routers, lm_head
        return {"dense_read": dense_read, "experts_active": experts_active,
                "experts_all": experts_all, "per_expert": per_expert,
                "decode_read": dense_read + experts_active}
    read = total - emb if not cfg.tie_word_embeddings else total  # tied: lm_head = embedding
    return {"decode_read": read}


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------

def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    prog = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog)))


def make_optimizer(model, lr: float, wd: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in n else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


def batch_at(stream: np.ndarray, rng: np.random.Generator, bsz: int, ctx: int) -> torch.Tensor:
    starts = rng.integers(0, len(stream) - ctx - 1, size=bsz)
    return torch.from_numpy(np.stack([stream[s:s + ctx + 1] for s in starts]).astype(np.int64))


def kd_loss(student_logits, teacher_logits, targets, alpha: float, temp: float):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, targets)."""
    v = student_logits.shape[-1]
    s = student_logits.reshape(-1, v).float()
    t = teacher_logits.reshape(-1, v).float()
    ce = F.cross_entropy(s, targets.reshape(-1))
    if alpha <= 0:
        return ce, ce, torch.zeros(())
    kl = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1),
                  log_target=True, reduction="batchmean") * temp * temp
    return alpha * kl + (1 - alpha) * ce, ce, kl


class StepBudget:
    """A fixed step count, or one sized by wall time: after `calib` steps the total is set from
    the median step time and re-estimated every 10 steps from the recent speed (the machine is
    shared) until 75 % of the run, after which it is frozen so that the cosine tail is intact."""

    def __init__(self, steps: int, minutes: float | None, calib: int = 10):
        self.fixed = minutes is None
        self.total = steps if self.fixed else None
        self.budget = None if self.fixed else minutes * 60.0
        self.calib = calib
        self.times: list[float] = []
        self.t_start = time.time()

    def horizon(self) -> int:
        """Total used by the LR schedule (a long placeholder until calibrated)."""
        return self.total if self.total is not None else 10 ** 6

    def done(self, step: int) -> bool:
        return self.total is not None and step >= self.total

    def record(self, step: int, dt: float) -> None:
        self.times.append(dt)
        if self.fixed:
            return
        if step == self.calib or (self.total is not None and step % 10 == 0 and step < 0.75 * self.total):
            recent = float(np.median(self.times[2:])) if step == self.calib else float(np.mean(self.times[-20:]))
            left = self.budget - (time.time() - self.t_start)
            new_total = max(step + 1, step + int(left / recent))
            if self.total is None:
                log(f"  {recent:.2f} s/step -> {new_total} steps for {self.budget / 60:.1f} min")
            self.total = new_total


class ThreadPicker:
    """Fixed torch intra-op thread count, or ("auto") a choice between 1 and 2 threads that
    follows the load of a shared machine: every 25 steps one step is run with the other count
    and the faster (per token) is kept. Under contention one thread is often faster than two
    (a descheduled OpenMP thread stalls every parallel region). Auto mode is not bitwise
    reproducible by a fixed-thread run; use it only with --minutes-*."""

    def __init__(self, spec: str):
        self.auto = spec == "auto"
        self.cur = 2 if self.auto else int(spec)
        self.probe = False
        self.hist: dict[tuple[int, str], list[float]] = {}
        self.steps = {1: 0, 2: 0}
        self.switches = 0
        torch.set_num_threads(self.cur)

    def before(self, step: int) -> None:
        self.probe = self.auto and step % 25 == 24
        torch.set_num_threads(3 - self.cur if self.probe else self.cur)

    def after(self, dt: float, tokens: int, kind: str = "") -> None:
        """`kind` separates batches of different cost (compared only like for like)."""
        n = torch.get_num_threads()
        self.steps[n] = self.steps.get(n, 0) + 1
        per = dt / tokens
        if not self.auto:
            return
        if self.probe:
            mine = self.hist.get((self.cur, kind), [])[-5:]
            if mine and per < 0.9 * float(np.median(mine)):
                log(f"  threads {self.cur} -> {n} ({per * 1e6:.0f} vs "
                    f"{float(np.median(mine)) * 1e6:.0f} us/token)")
                self.cur = n
                self.switches += 1
                self.hist[(n, kind)] = [per]
            torch.set_num_threads(self.cur)
        else:
            self.hist.setdefault((n, kind), []).append(per)

    def report(self) -> dict[str, Any]:
        return {"mode": "auto" if self.auto else "fixed", "steps_per_thread_count": dict(self.steps),
                "switches": self.switches}


def train_target(a, target, draft, stream, seed) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 1)
    opt_t = make_optimizer(target, a.t_lr, a.wd)
    opt_d = make_optimizer(draft, a.d_lr, a.wd) if a.cotrain else None
    bud = StepBudget(a.target_steps, a.minutes_target)
    hist = []
    t_start = time.time()
    step = 0
    target.train()
    draft.train()
    tp = ThreadPicker(a.threads)
    while not bud.done(step):
        tp.before(step)
        t0 = time.time()
        total = bud.horizon()
        lr = lr_at(step, total, a.t_lr, a.warmup)
        for g in opt_t.param_groups:
            g["lr"] = lr
        xb = batch_at(stream, rng, a.t_batch, a.ctx)
        inp, tgt = xb[:, :-1], xb[:, 1:]
        out = target(input_ids=inp, output_router_logits=True, use_cache=False)
        ce = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), tgt.reshape(-1))
        loss = ce + a.aux_coef * out.aux_loss
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(target.parameters(), 1.0)
        opt_t.step()
        opt_t.zero_grad(set_to_none=True)
        d_ce = float("nan")
        if opt_d is not None:
            # online distillation from the current target (alpha ramps in over the first 30 %)
            d_lr = lr_at(step, total, a.d_lr, a.warmup)
            for g in opt_d.param_groups:
                g["lr"] = d_lr
            alpha = a.kd_alpha * min(1.0, step / max(1, 0.3 * total))
            d_logits = draft(input_ids=inp, use_cache=False).logits
            d_loss, d_ce_t, _ = kd_loss(d_logits, out.logits.detach(), tgt, alpha, a.kd_temp)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
            d_ce = float(d_ce_t.detach())
        step += 1
        bud.record(step, time.time() - t0)
        tp.after(time.time() - t0, inp.numel())
        total = bud.horizon()
        if step % a.log_every == 0 or step == total:
            hist.append({"step": step, "ce": round(float(ce), 4), "aux": round(float(out.aux_loss), 4),
                         "draft_ce": round(d_ce, 4), "lr": lr, "grad_norm": round(float(gn), 3)})
            el = time.time() - t_start
            log(f"target step {step}/{total}  ce {float(ce):.3f}  "
                f"aux {float(out.aux_loss):.3f}  draft ce {d_ce:.3f}  lr {lr:.2e}  "
                f"{a.t_batch * a.ctx * step / el:.0f} tok/s  {el / 60:.1f} min")
    el = time.time() - t_start
    return {"steps": step, "tokens": step * a.t_batch * a.ctx, "seconds": round(el, 1),
            "tokens_per_s": round(step * a.t_batch * a.ctx / el, 1), "history": hist,
            "cotrained_draft": bool(opt_d is not None), "threads": tp.report()}


@torch.no_grad()
def generate_target_data(a, target, stream: np.ndarray, seed: int,
                         rng_offset: int = 4) -> torch.Tensor:
    """Greedy continuations by the trained target of prompts drawn from the training stream:
    the prefixes the draft will face in greedy speculative decoding (sequence-level
    distillation, as in DistillSpec, Zhou et al. 2023).

    Every sequence has 1 + gen_prompt_len + gen_new tokens. With ``a.gen_prompt_min`` set,
    each batch of ``a.gen_batch`` prompts gets its own random prompt length in
    [gen_prompt_min, gen_prompt_len] and correspondingly more new tokens (same total length,
    no padding): short prompts are what interactive use looks like, and the target's
    continuation of little context differs from its continuation of a long one."""
    rng = np.random.default_rng(seed + rng_offset)
    p_min = getattr(a, "gen_prompt_min", None)
    lens = []
    if p_min is None:
        lens = [a.gen_prompt_len] * a.gen_seqs
    else:
        if not 1 <= p_min <= a.gen_prompt_len:
            sys.exit("error: --gen-prompt-min must be in [1, --gen-prompt-len]")
        for i in range(0, a.gen_seqs, a.gen_batch):
            n = min(a.gen_batch, a.gen_seqs - i)
            lens += [int(rng.integers(p_min, a.gen_prompt_len + 1))] * n
    prompts = []
    while len(prompts) < a.gen_seqs:
        plen = lens[len(prompts)]
        s = int(rng.integers(0, len(stream) - plen))
        ids = stream[s:s + plen].tolist()
        if BOS_ID in ids or EOS_ID in ids:
            continue
        prompts.append([BOS_ID] + ids)
    target.eval()
    out = []
    t_start = time.time()
    for i in range(0, len(prompts), a.gen_batch):
        inp = torch.tensor(prompts[i:i + a.gen_batch])
        n_new = a.gen_new + a.gen_prompt_len - (inp.shape[1] - 1)
        res = target.generate(inp, attention_mask=torch.ones_like(inp), do_sample=False,
                              max_new_tokens=n_new, min_new_tokens=n_new,
                              eos_token_id=None, pad_token_id=UNK_ID)
        out.append(res)
        log(f"generated {min(i + a.gen_batch, len(prompts))}/{len(prompts)} sequences "
            f"({time.time() - t_start:.0f} s)")
    return torch.cat(out)


def train_draft(a, target, draft, stream, seed, gen: torch.Tensor | None = None,
                peak_lr: float | None = None, gen_share: float = 0.5) -> dict[str, Any]:
    """Distil the draft from the frozen target; with `gen`, a share `gen_share` of the steps
    (evenly spread; 0.5 = every other step) uses a batch of the target's own greedy
    continuations instead of corpus text. `peak_lr` defaults to --d-lr2. With --kd-hard the
    cross-entropy term is taken against the target's argmax instead of the data's next token
    (on the target's greedy continuations the two coincide)."""
    if not 0.0 <= gen_share <= 1.0:
        sys.exit("error: --gen-share must be in [0, 1]")
    peak = a.d_lr2 if peak_lr is None else peak_lr
    rng = np.random.default_rng(seed + 2)
    opt = make_optimizer(draft, peak, a.wd)
    target.eval()
    draft.train()
    bud = StepBudget(a.draft_steps, a.minutes_draft)
    hist = []
    t_start = time.time()
    step = n_tok = n_gen_tok = 0
    tp = ThreadPicker(a.threads)
    while not bud.done(step):
        tp.before(step)
        t0 = time.time()
        total = bud.horizon()
        lr = lr_at(step, total, peak, a.d_warmup2, floor=0.05)
        for g in opt.param_groups:
            g["lr"] = lr
        on_gen = gen is not None and math.floor((step + 1) * gen_share) > math.floor(step * gen_share)
        if on_gen:
            xb = gen[torch.from_numpy(rng.integers(0, len(gen), size=a.d_gen_batch))]
        else:
            xb = batch_at(stream, rng, a.d_batch, a.ctx)
        inp, tgt = xb[:, :-1], xb[:, 1:]
        with torch.no_grad():
            t_logits = target(input_ids=inp, use_cache=False).logits
        d_logits = draft(input_ids=inp, use_cache=False).logits
        ce_tgt = t_logits.argmax(-1) if getattr(a, "kd_hard", False) else tgt
        loss, ce, kl = kd_loss(d_logits, t_logits, ce_tgt, a.kd_alpha, a.kd_temp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            agree = float((d_logits.argmax(-1) == t_logits.argmax(-1)).float().mean())
        step += 1
        bud.record(step, time.time() - t0)
        tp.after(time.time() - t0, inp.numel(), "gen" if on_gen else "corpus")
        total = bud.horizon()
        n_tok += inp.numel()
        n_gen_tok += inp.numel() if on_gen else 0
        if step % a.log_every in (0, 1) or step == total:
            src = "generated" if on_gen else "corpus"
            hist.append({"step": step, "data": src, "ce": round(float(ce), 4),
                         "kl": round(float(kl), 4), "agree": round(agree, 4), "lr": lr})
            el = time.time() - t_start
            log(f"draft step {step}/{total} ({src})  ce {float(ce):.3f}  "
                f"kl {float(kl):.3f}  argmax agree {agree:.3f}  lr {lr:.2e}  {el / 60:.1f} min")
    el = time.time() - t_start
    return {"steps": step, "tokens": n_tok, "tokens_on_target_generations": n_gen_tok,
            "peak_lr": peak, "gen_share": gen_share if gen is not None else 0.0,
            "seconds": round(el, 1), "history": hist, "threads": tp.report()}


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------

def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def export(model, tok: Tokenizer, out: Path, ctx: int) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    if hasattr(model.config, "output_router_logits"):
        model.config.output_router_logits = False
    gc = model.generation_config
    gc.bos_token_id = BOS_ID
    gc.eos_token_id = EOS_ID
    gc.pad_token_id = None
    model.save_pretrained(str(out))
    save_tokenizer(tok, out, ctx)
    for f in out.iterdir():  # save_pretrained creates weight files with mode 0600
        f.chmod(0o644)
    model.to(torch.float32)


def check_export(target_dir: Path, draft_dir: Path, target_mem) -> dict[str, Any]:
    with safe_open(str(target_dir / "model.safetensors"), "pt") as sf:
        names = list(sf.keys())
        dtypes = {sf.get_slice(k).get_dtype() for k in names}
        assert dtypes == {"BF16"}, dtypes
        assert not any("gate_up_proj" in n or "mlp.experts" in n for n in names), names
        cfg = target_mem.config
        inter = cfg.intermediate_size
        for li, layer in enumerate(target_mem.model.layers):
            gu = layer.mlp.experts.gate_up_proj.detach().to(torch.bfloat16)
            dn = layer.mlp.experts.down_proj.detach().to(torch.bfloat16)
            for e in range(cfg.num_local_experts):
                p = f"model.layers.{li}.block_sparse_moe.experts.{e}."
                assert torch.equal(sf.get_tensor(p + "w1.weight"), gu[e, :inter]), p
                assert torch.equal(sf.get_tensor(p + "w3.weight"), gu[e, inter:]), p
                assert torch.equal(sf.get_tensor(p + "w2.weight"), dn[e]), p
            assert f"model.layers.{li}.block_sparse_moe.gate.weight" in names
    with safe_open(str(draft_dir / "model.safetensors"), "pt") as sf:
        dnames = list(sf.keys())
        assert {sf.get_slice(k).get_dtype() for k in dnames} == {"BF16"}
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (target_dir / f).read_bytes() == (draft_dir / f).read_bytes(), f
    for d in (target_dir, draft_dir):
        g = json.loads((d / "generation_config.json").read_text())
        assert g.get("bos_token_id") == BOS_ID and g.get("eos_token_id") == EOS_ID, g
    return {"target_tensors": len(names), "draft_tensors": len(dnames),
            "expert_tensor_example": "model.layers.0.block_sparse_moe.experts.0.w1.weight",
            "per_expert_layout_verified": True}


# --------------------------------------------------------------------------------------
# Evaluation (on the saved checkpoints, float32 compute)
# --------------------------------------------------------------------------------------

def load_saved(d: Path, moe: bool):
    cls = MixtralForCausalLM if moe else LlamaForCausalLM
    kw = dict(dtype=torch.float32, attn_implementation="sdpa")
    if moe:
        kw["experts_implementation"] = "eager"
    return cls.from_pretrained(str(d), **kw).eval()


def eval_chunks(test_stream: np.ndarray, ctx: int, max_chunks: int) -> list[torch.Tensor]:
    n = min(max_chunks, (len(test_stream) - 1) // ctx)
    return [torch.from_numpy(test_stream[i * ctx:i * ctx + ctx + 1].astype(np.int64))
            for i in range(n)]


@torch.no_grad()
def teacher_forced(target, draft, chunks, bsz=8) -> dict[str, Any]:
    nll_t = nll_d = 0.0
    agree = agree_t_true = agree_d_true = n = 0
    for i in range(0, len(chunks), bsz):
        xb = torch.stack(chunks[i:i + bsz])
        inp, tgt = xb[:, :-1], xb[:, 1:]
        lt = target(input_ids=inp).logits.float()
        ld = draft(input_ids=inp).logits.float()
        v = lt.shape[-1]
        nll_t += float(F.cross_entropy(lt.reshape(-1, v), tgt.reshape(-1), reduction="sum"))
        nll_d += float(F.cross_entropy(ld.reshape(-1, v), tgt.reshape(-1), reduction="sum"))
        at, ad = lt.argmax(-1), ld.argmax(-1)
        agree += int((at == ad).sum())
        agree_t_true += int((at == tgt).sum())
        agree_d_true += int((ad == tgt).sum())
        n += tgt.numel()
    return {"tokens": n,
            "target_ppl": round(math.exp(nll_t / n), 3),
            "draft_ppl": round(math.exp(nll_d / n), 3),
            "target_top1_acc": round(agree_t_true / n, 4),
            "draft_top1_acc": round(agree_d_true / n, 4),
            "teacher_forced_agreement": round(agree / n, 4)}


@torch.no_grad()
def greedy(model, ids: list[int], n: int) -> list[int]:
    inp = torch.tensor([ids])
    res = model.generate(inp, attention_mask=torch.ones_like(inp), do_sample=False,
                         max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                         pad_token_id=UNK_ID)
    return res[0, len(ids):].tolist()


@torch.no_grad()
def draft_match_lengths(draft, seq: list[int], start: int, kmax: int) -> list[int]:
    """For every position i in [start, len(seq)): how many of the draft's greedy kmax-token
    proposals from prefix seq[:i] equal seq[i:i+kmax] (leading matches)."""
    out = []
    positions = list(range(start, len(seq)))
    # batch all positions: left-pad prefixes is awkward for RoPE; run one at a time with cache
    for i in positions:
        ref = seq[i:i + kmax]
        prop = greedy(draft, seq[:i], len(ref))
        m = 0
        while m < len(ref) and prop[m] == ref[m]:
            m += 1
        out.append(m)
    return out


@torch.no_grad()
def simulate_speculative(target, draft, prompts: list[list[int]], n_new: int, kmax: int):
    """Greedy speculative decoding is lossless, so the output is the target's greedy
    continuation g. At position i the draft proposes k tokens from g[:i]; the target accepts
    the longest matching prefix a <= k and adds one token of its own: a block emits a + 1
    tokens. Uses m_i = matches of the draft's kmax-token proposal (a = min(m_i, k))."""
    per_k = {k: {"blocks": 0, "emitted": 0, "accepted": 0} for k in range(1, kmax + 1)}
    seqs = []
    for ids in prompts:
        g = ids + greedy(target, ids, n_new)
        seqs.append(g)
        m = draft_match_lengths(draft, g, len(ids), kmax)
        accumulate_blocks(per_k, m, n_new)
    return summarize_blocks(per_k), seqs


def accumulate_blocks(per_k: dict[int, dict[str, int]], m: list[int], n_new: int) -> None:
    """Adds the blocks of one sequence of n_new target tokens to `per_k`, given m[i] = leading
    matches of the draft's proposal from the prefix before new token i."""
    for k in per_k:
        i = 0
        while i < n_new:
            a = min(m[i], k, n_new - i - 1) if i < n_new - 1 else 0
            per_k[k]["blocks"] += 1
            per_k[k]["accepted"] += a
            per_k[k]["emitted"] += a + 1
            i += a + 1


def summarize_blocks(per_k: dict[int, dict[str, int]]) -> dict[str, Any]:
    res = {}
    for k, v in per_k.items():
        res[str(k)] = {"mean_tokens_per_block": round(v["emitted"] / v["blocks"], 4),
                       "mean_accepted_draft_tokens": round(v["accepted"] / v["blocks"], 4),
                       "acceptance_rate": round(v["accepted"] / (v["blocks"] * k), 4),
                       "blocks": v["blocks"]}
    return res


@torch.no_grad()
def speculative_from_forcing(target, draft, prompts: list[list[int]], n_new: int, kmax: int,
                             bsz: int = 64) -> dict[str, Any]:
    """simulate_speculative at scale: the draft's j-th greedy proposal from prefix g[:i] is
    drafted from g[:i+j-1] whenever its first j-1 proposals were accepted, so the leading
    matches m_i are the run of teacher-forced argmax matches of the draft on g starting at i;
    one forward pass per sequence instead of one generate() per position. The target's
    continuations are generated in batches of same-length prompts, so a near-tie can resolve
    differently than at batch 1: a check of the recipe on many prompts, not the report's
    reference numbers. Also reports the mean of sum_x min(p_target(x), p_draft(x)) over the
    same positions: the per-token acceptance probability of speculative *sampling* at
    temperature 1 (Leviathan et al. 2023), which a draft tuned for argmax agreement can lose."""
    per_k = {k: {"blocks": 0, "emitted": 0, "accepted": 0} for k in range(1, kmax + 1)}
    hits = n = 0
    overlap = 0.0
    for b in range(0, len(prompts), bsz):
        group = prompts[b:b + bsz]
        assert len({len(p) for p in group}) == 1, "one prompt length per batch"
        inp = torch.tensor(group)
        plen = inp.shape[1]
        g = target.generate(inp, attention_mask=torch.ones_like(inp), do_sample=False,
                            max_new_tokens=n_new, min_new_tokens=n_new, eos_token_id=None,
                            pad_token_id=UNK_ID)
        ld = draft(input_ids=g[:, :-1]).logits[:, plen - 1:].float()
        lt = target(input_ids=g[:, :-1]).logits[:, plen - 1:].float()
        overlap += float(torch.minimum(lt.softmax(-1), ld.softmax(-1)).sum(-1).sum())
        hit = (ld.argmax(-1) == g[:, plen:])  # hit[:, j]: new token j drafted right
        hits += int(hit.sum())
        n += hit.numel()
        for row in hit.tolist():
            m, run = [0] * n_new, 0
            for j in range(n_new - 1, -1, -1):
                run = run + 1 if row[j] else 0
                m[j] = min(run, kmax)
            accumulate_blocks(per_k, m, n_new)
    return {"prompts": len(prompts), "prompt_tokens": len(prompts[0]), "new_tokens": n_new,
            "agreement_on_target_continuations": round(hits / n, 4),
            "sampling_acceptance_t1": round(overlap / n, 4),
            "per_k": summarize_blocks(per_k)}


@torch.no_grad()
def router_choices(target, ids: list[int]) -> torch.Tensor:
    """Top-k expert ids chosen by every MoE layer for every position: [layers, T, k]."""
    rec: dict[int, torch.Tensor] = {}
    hooks = []
    for name, mod in target.named_modules():
        if type(mod).__name__.endswith("TopKRouter"):
            li = int(re.search(r"layers\.(\d+)\.", name).group(1))
            hooks.append(mod.register_forward_hook(
                lambda _m, _i, out, li=li: rec.__setitem__(li, out[2].detach().clone())))
    try:
        target(input_ids=torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([rec[i] for i in sorted(rec)])


def expert_union(target, seqs: list[list[int]], starts: list[int], nmax: int = 9) -> dict[str, Any]:
    """Mean number of distinct experts a layer needs for a block of n consecutive tokens
    (what one verification pass of k = n - 1 draft tokens reads at batch 1), and the share of
    routed tokens per expert."""
    sums = {n: 0.0 for n in range(1, nmax + 1)}
    cnts = {n: 0 for n in range(1, nmax + 1)}
    n_exp = target.config.num_local_experts
    load = torch.zeros(target.config.num_hidden_layers, n_exp)
    for ids, st in zip(seqs, starts):
        ch = router_choices(target, ids)[:, st:]  # [L, T, k]
        load += F.one_hot(ch, n_exp).sum(dim=(1, 2)).float()
        L, T, _ = ch.shape
        for n in range(1, nmax + 1):
            for t in range(0, T - n + 1):
                win = ch[:, t:t + n].reshape(L, -1)
                sums[n] += sum(len(torch.unique(win[l])) for l in range(L))
                cnts[n] += L
    share = load / load.sum(dim=1, keepdim=True)
    return {"mean_distinct_experts_per_layer": {str(n): round(sums[n] / max(1, cnts[n]), 3)
                                                for n in range(1, nmax + 1)},
            "expert_share_min": round(float(share.min()), 4),
            "expert_share_max": round(float(share.max()), 4)}


def sim_prompts(test_stream: np.ndarray, n: int, plen: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed + 3)
    out = []
    while len(out) < n:
        s = int(rng.integers(0, len(test_stream) - plen))
        ids = test_stream[s:s + plen].tolist()
        if BOS_ID in ids or EOS_ID in ids:
            continue
        out.append([BOS_ID] + ids)
    return out


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------

def evaluate(a, tdir: Path, ddir: Path, test_stream: np.ndarray, tok: Tokenizer) -> dict[str, Any]:
    rep: dict[str, Any] = {}
    target = load_saved(tdir, True)
    draft = load_saved(ddir, False)
    hf_tok = AutoTokenizer.from_pretrained(str(tdir))
    assert hf_tok("The Python interpreter")["input_ids"] == tok.encode("The Python interpreter").ids
    chunks = eval_chunks(test_stream, a.ctx, a.eval_chunks)
    rep["heldout"] = teacher_forced(target, draft, chunks)
    log(f"held-out: {rep['heldout']}")
    prompts = sim_prompts(test_stream, a.sim_prompts, a.sim_prompt_len, a.seed)
    per_k, seqs = simulate_speculative(target, draft, prompts, a.sim_new, 8)
    rep["speculative_simulation"] = {
        "method": "greedy speculative decoding simulated with the saved HF models (float32 "
                  "compute): target greedy continuation of each held-out prompt, the draft "
                  "proposes k tokens greedily from every accepted prefix, the longest matching "
                  "prefix is accepted plus one target token per block",
        "prompts": len(prompts), "prompt_tokens": a.sim_prompt_len + 1, "new_tokens": a.sim_new,
        "per_k": per_k,
    }
    for k, v in per_k.items():
        log(f"k={k}: {v['mean_tokens_per_block']:.3f} tokens/block, acceptance {v['acceptance_rate']:.3f}")
    n_chunks = min(8, len(chunks))
    rep["expert_union"] = {
        "note": "mean distinct experts (of 8) one MoE layer routes a block of n consecutive "
                "tokens to; a verification pass of k draft tokens covers n = k + 1",
        "on_target_greedy_continuations": expert_union(target, seqs, [len(p) for p in prompts]),
        "on_heldout_text": expert_union(target, [c.tolist() for c in chunks[:n_chunks]],
                                        [0] * n_chunks),
    }
    log(f"expert union (greedy continuations): "
        f"{rep['expert_union']['on_target_greedy_continuations']}")
    samples = {}
    for p in SAMPLE_PROMPTS:
        ids = hf_tok(p)["input_ids"]
        samples[p] = {
            "target": hf_tok.decode(greedy(target, ids, 48), skip_special_tokens=False),
            "draft": hf_tok.decode(greedy(draft, ids, 48), skip_special_tokens=False),
        }
        log(f"{p!r} -> target: {samples[p]['target']!r}")
        log(f"{p!r} -> draft : {samples[p]['draft']!r}")
    rep["samples_greedy_48_tokens"] = samples
    return rep


def write_token_counts(tok: Tokenizer, train_stream: np.ndarray, out: Path) -> None:
    """Writes out/token_counts.json: occurrences of every token id in the training split.
    specmoe ranks the draft's vocabulary by it (`--draft-vocab`, FR-Spec)."""
    counts = np.bincount(train_stream, minlength=tok.get_vocab_size())
    obj = {
        "corpus": "training split of the Python 3.11 documentation (PSF licence, Debian "
                  "python3.11-doc), tokenized with this directory's tokenizer.json",
        "counts": [int(c) for c in counts],
    }
    (out / "token_counts.json").write_text(json.dumps(obj, separators=(",", ":")) + "\n",
                                            encoding="utf-8")


def counts_only(a) -> None:
    """Re-write <out-dir>/tiny-draft/token_counts.json from the corpus (no training)."""
    ddir = a.out_dir / "tiny-draft"
    docs = extract_corpus(a.doc_root)
    train_docs, _ = split_docs(docs, a.seed, a.heldout_frac)
    tok = Tokenizer.from_file(str(ddir / "tokenizer.json"))
    write_token_counts(tok, encode_docs(tok, [t for _, t in train_docs]), ddir)
    log(f"wrote {ddir / 'token_counts.json'}")


def eval_only(a) -> None:
    """Re-run the evaluation on existing checkpoints and update their train_report.json."""
    tdir, ddir = a.out_dir / "tiny-mixtral", a.out_dir / "tiny-draft"
    path = a.out_dir / "train_report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    docs = extract_corpus(a.doc_root)
    _, test_docs = split_docs(docs, a.seed, a.heldout_frac)
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    test_stream = encode_docs(tok, [t for _, t in test_docs])
    t_eval = time.time()
    report.update(evaluate(a, tdir, ddir, test_stream, tok))
    report["eval_seconds"] = round(time.time() - t_eval, 1)
    write_json(path, report)
    path.chmod(0o644)
    log(f"updated {path}")


DRAFT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "token_counts.json")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fast_speculative_evals(a, tdir: Path, ddir: Path, test_stream: np.ndarray) -> dict[str, Any]:
    """speculative_from_forcing on --fast-eval-prompts held-out prompts of --sim-prompt-len
    tokens (the first --sim-prompts of them are evaluate()'s prompts) and as many of
    --fast-eval-short-len tokens (closer to interactive prompts)."""
    if a.fast_eval_prompts <= 0:
        return {}
    target, draft = load_saved(tdir, True), load_saved(ddir, False)
    rep = {}
    for name, plen, seed in (("long_prompts", a.sim_prompt_len, a.seed),
                             ("short_prompts", a.fast_eval_short_len, a.seed + 10)):
        prompts = sim_prompts(test_stream, a.fast_eval_prompts, plen, seed)
        r = speculative_from_forcing(target, draft, prompts, a.sim_new, 8)
        rep[name] = r
        log(f"{ddir.name} fast check, {name} ({len(prompts)} x {plen + 1} tokens): agreement "
            f"{r['agreement_on_target_continuations']:.4f}, sampling acceptance (T=1) "
            f"{r['sampling_acceptance_t1']:.4f}, acceptance k=1..8 "
            + " ".join(f"{v['acceptance_rate']:.3f}" for v in r["per_k"].values()))
    return rep


def export_draft_only(draft, src: Path, out: Path) -> dict[str, Any]:
    """Writes the draft in bf16 to `out` (the committed draft's format), with the tokenizer
    files and token_counts.json copied from `src`; checks that config.json and
    generation_config.json equal the committed ones and that the tensors have the committed
    names, shapes and dtype."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    draft = draft.to(torch.bfloat16)
    draft.config.dtype = torch.bfloat16
    gc = draft.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = BOS_ID, EOS_ID, None
    draft.save_pretrained(str(out))
    draft.to(torch.float32)
    for f in ("tokenizer.json", "tokenizer_config.json", "token_counts.json"):
        shutil.copyfile(src / f, out / f)
    for f in out.iterdir():
        f.chmod(0o644)
    assert sorted(f.name for f in out.iterdir()) == sorted(DRAFT_FILES), list(out.iterdir())
    for f in ("config.json", "generation_config.json"):
        new, old = json.loads((out / f).read_text()), json.loads((src / f).read_text())
        assert new == old, (f, {k: (old.get(k), new.get(k)) for k in set(old) | set(new)
                                if old.get(k) != new.get(k)})
    shapes = {}
    for d in (src, out):
        with safe_open(str(d / "model.safetensors"), "pt") as sf:
            shapes[d] = {k: (sf.get_slice(k).get_dtype(), tuple(sf.get_slice(k).get_shape()))
                         for k in sf.keys()}
    assert shapes[src] == shapes[out], "tensor names/shapes/dtypes differ from the committed draft"
    return {"tensors": len(shapes[out]), "same_names_shapes_dtypes_as_committed": True,
            "config_equal_to_committed": True, "bytes": dir_size(out),
            "model_sha256": sha256_file(out / "model.safetensors")}


def redistil_draft(a) -> None:
    """Continue distilling the committed draft from the committed (frozen) target and export
    only the draft to --draft-out, with a JSON report next to it (--redistil-report).

    Same corpus split and the committed tokenizer (not retrained); a fresh set of the target's
    greedy continuations (--gen-seqs, prompts drawn with a different seed than the committed
    run's, optionally of varying length: --gen-prompt-min); --gen-share of the steps on them;
    a fresh AdamW and cosine schedule peaking at --redistil-lr, for --minutes-draft (or
    --draft-steps). The committed draft (unless --no-baseline-eval) and the new one are
    evaluated by the same evaluate() as a normal run, plus fast_speculative_evals()."""
    tdir, sdir = a.out_dir / "tiny-mixtral", a.out_dir / "tiny-draft"
    out = a.draft_out
    rpath = a.redistil_report or out.parent / f"{out.name}.report.json"
    for d in (tdir, sdir):
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (d / f).is_file():
                sys.exit(f"error: {d / f} not found")
    if out.resolve() in (tdir.resolve(), sdir.resolve(), a.out_dir.resolve()):
        sys.exit(f"error: --draft-out {out} would overwrite a committed model; write elsewhere "
                 f"and copy after checking the report")
    if out.exists() and not (out.is_dir() and {f.name for f in out.iterdir()} <= set(DRAFT_FILES)):
        sys.exit(f"error: --draft-out {out} exists and is not a draft directory")
    if (tdir / "tokenizer.json").read_bytes() != (sdir / "tokenizer.json").read_bytes():
        sys.exit("error: the committed target and draft have different tokenizers")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    report: dict[str, Any] = {
        "mode": "redistil-draft",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "versions": versions(),
        "start": {"target": str(tdir), "draft": str(sdir),
                  "target_model_sha256": sha256_file(tdir / "model.safetensors"),
                  "draft_model_sha256": sha256_file(sdir / "model.safetensors")},
    }

    docs = extract_corpus(a.doc_root)
    train_docs, test_docs = split_docs(docs, a.seed, a.heldout_frac)
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    train_stream = encode_docs(tok, [t for _, t in train_docs])
    test_stream = encode_docs(tok, [t for _, t in test_docs])
    report["corpus"] = {"train_tokens": int(len(train_stream)), "heldout_tokens": int(len(test_stream)),
                        "heldout_pages": [n for n, _ in test_docs]}
    committed = a.out_dir / "train_report.json"
    if committed.exists():
        c = json.loads(committed.read_text()).get("corpus", {})
        same = (c.get("train_tokens"), c.get("heldout_tokens")) == (len(train_stream), len(test_stream))
        report["corpus"]["matches_committed_run"] = same
        if not same:
            log(f"warning: token counts differ from {committed} (different corpus or --seed?)")
    log(f"corpus: train {len(train_stream)} tokens, held-out {len(test_stream)} tokens")

    if a.baseline_eval:
        t_eval = time.time()
        report["baseline_committed_draft"] = evaluate(a, tdir, sdir, test_stream, tok)
        report["baseline_committed_draft"]["fast_check"] = fast_speculative_evals(a, tdir, sdir, test_stream)
        report["baseline_eval_seconds"] = round(time.time() - t_eval, 1)

    target = load_saved(tdir, True)  # bf16 weights in float32: the target as shipped
    for p in target.parameters():
        p.requires_grad_(False)
    draft = load_saved(sdir, False)
    for p in draft.parameters():
        p.requires_grad_(True)

    gen = None
    gen_seed = a.seed if a.gen_seed is None else a.gen_seed  # prompts and batch order
    if a.gen_seqs > 0:
        t_gen = time.time()
        key = {"target_model_sha256": report["start"]["target_model_sha256"], "seed": gen_seed,
               "gen_seqs": a.gen_seqs, "gen_prompt_len": a.gen_prompt_len,
               "gen_prompt_min": a.gen_prompt_min, "gen_new": a.gen_new, "gen_batch": a.gen_batch}
        cached = None
        if a.gen_cache is not None and a.gen_cache.exists():
            obj = torch.load(a.gen_cache)
            if obj.get("key") == key:
                cached = obj["gen"]
                log(f"loaded {cached.shape[0]} target continuations from {a.gen_cache}")
            else:
                log(f"{a.gen_cache} was made with other settings; regenerating")
        gen = cached if cached is not None else generate_target_data(a, target, train_stream, gen_seed, 5)
        if a.gen_cache is not None and cached is None:
            a.gen_cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, "gen": gen}, a.gen_cache)
        report["target_generations"] = {
            "sequences": int(gen.shape[0]), "tokens_per_sequence": int(gen.shape[1]),
            "prompt_tokens": (f"{a.gen_prompt_min + 1}..{a.gen_prompt_len + 1}"
                              if a.gen_prompt_min is not None else a.gen_prompt_len + 1),
            "decoding": "greedy",
            "prompts": f"random windows of the training split (seed {gen_seed} + 5)",
            "from_cache": cached is not None, "seconds": round(time.time() - t_gen, 1)}

    report["draft_training"] = train_draft(a, target, draft, train_stream, gen_seed + 5, gen,
                                           peak_lr=a.redistil_lr, gen_share=a.gen_share)
    report["draft_training"]["loss"] = (
        f"{a.kd_alpha} * T^2 * KL(target_T || draft_T) + {1 - a.kd_alpha:g} * CE against "
        f"{'the target argmax' if a.kd_hard else 'the next token'}, T = {a.kd_temp}")
    log(f"draft done: {report['draft_training']['steps']} steps, "
        f"{report['draft_training']['seconds'] / 60:.1f} min")
    draft.eval()
    report["export"] = export_draft_only(draft, sdir, out)
    log(f"exported {out} ({report['export']['bytes'] / 1e6:.1f} MB)")
    del target, draft

    t_eval = time.time()
    report.update(evaluate(a, tdir, out, test_stream, tok))
    report["fast_check"] = fast_speculative_evals(a, tdir, out, test_stream)
    report["eval_seconds"] = round(time.time() - t_eval, 1)
    report["total_seconds"] = round(time.time() - T0, 1)
    write_json(rpath, report)
    rpath.chmod(0o644)
    log(f"wrote {rpath}")


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__, "numpy": np.__version__}


def dir_size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("models"))
    ap.add_argument("--doc-root", type=Path, default=DOC_ROOT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", default="1",
                    help="torch threads: 1, 2, or auto (pick 1 or 2 by measured speed; "
                         "only with --minutes-*, not bitwise reproducible)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--ctx", type=int, default=512, help="training context = max_position_embeddings")
    ap.add_argument("--heldout-frac", type=float, default=0.02)
    # target
    ap.add_argument("--t-hidden", type=int, default=512)
    ap.add_argument("--t-layers", type=int, default=4)
    ap.add_argument("--t-heads", type=int, default=8)
    ap.add_argument("--t-kv-heads", type=int, default=4)
    ap.add_argument("--t-inter", type=int, default=128, help="expert intermediate size")
    ap.add_argument("--t-batch", type=int, default=4)
    ap.add_argument("--t-lr", type=float, default=2e-3)
    ap.add_argument("--aux-coef", type=float, default=0.02)
    ap.add_argument("--target-steps", type=int, default=449)
    ap.add_argument("--minutes-target", type=float, default=None,
                    help="size the target run (and co-trained draft) by wall time instead")
    ap.add_argument("--warmup", type=int, default=60)
    # draft
    ap.add_argument("--d-hidden", type=int, default=128)
    ap.add_argument("--d-layers", type=int, default=2)
    ap.add_argument("--d-heads", type=int, default=4)
    ap.add_argument("--d-kv-heads", type=int, default=2)
    ap.add_argument("--d-inter", type=int, default=288)
    ap.add_argument("--d-batch", type=int, default=8)
    ap.add_argument("--d-lr", type=float, default=3e-3, help="draft LR while co-training")
    ap.add_argument("--d-lr2", type=float, default=1.5e-3, help="draft LR in the distillation phase")
    ap.add_argument("--d-warmup2", type=int, default=20)
    ap.add_argument("--no-cotrain", dest="cotrain", action="store_false",
                    help="do not co-train the draft during target training")
    ap.add_argument("--draft-steps", type=int, default=337)
    ap.add_argument("--minutes-draft", type=float, default=None)
    ap.add_argument("--d-gen-batch", type=int, default=8,
                    help="batch (sequences) of target generations in the distillation phase")
    ap.add_argument("--gen-seqs", type=int, default=512,
                    help="greedy target continuations to distil the draft on (0: none)")
    ap.add_argument("--gen-prompt-len", type=int, default=32)
    ap.add_argument("--gen-new", type=int, default=192)
    ap.add_argument("--gen-batch", type=int, default=64)
    ap.add_argument("--kd-alpha", type=float, default=0.8)
    ap.add_argument("--kd-temp", type=float, default=1.0)
    ap.add_argument("--wd", type=float, default=0.1)
    # evaluation
    ap.add_argument("--eval-chunks", type=int, default=48)
    ap.add_argument("--sim-prompts", type=int, default=16)
    ap.add_argument("--sim-prompt-len", type=int, default=32)
    ap.add_argument("--sim-new", type=int, default=96)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--eval-only", action="store_true",
                    help="only re-run the evaluation of <out-dir>/tiny-mixtral and tiny-draft "
                         "(updates the evaluation sections of <out-dir>/train_report.json)")
    ap.add_argument("--counts-only", action="store_true",
                    help="only re-write <out-dir>/tiny-draft/token_counts.json (the token "
                         "frequencies that rank the draft's vocabulary)")
    # continued distillation of the committed draft
    ap.add_argument("--gen-share", type=float, default=0.5,
                    help="share of distillation steps on the target's continuations (0.5: "
                         "every other step, the committed recipe)")
    ap.add_argument("--gen-prompt-min", type=int, default=None,
                    help="vary the prompt length of the target's continuations per batch in "
                         "[this, --gen-prompt-len] (same total length); default: fixed")
    ap.add_argument("--kd-hard", action="store_true",
                    help="take the distillation's cross-entropy term against the target's "
                         "argmax instead of the data's next token")
    ap.add_argument("--gen-seed", type=int, default=None,
                    help="with --redistil-draft: seed of the generation prompts and of the "
                         "batch order (default --seed); the corpus split always follows --seed")
    ap.add_argument("--redistil-draft", action="store_true",
                    help="continue distilling the committed <out-dir>/tiny-draft from the frozen "
                         "<out-dir>/tiny-mixtral (fresh target continuations, --gen-share, "
                         "--redistil-lr, --minutes-draft or --draft-steps) and export only the "
                         "draft to --draft-out; models/ is not written")
    ap.add_argument("--draft-out", type=Path, default=Path("/tmp/redistil/tiny-draft"),
                    help="output directory of --redistil-draft (replaced if it holds a draft)")
    ap.add_argument("--redistil-report", type=Path, default=None,
                    help="JSON report of --redistil-draft (default: <draft-out>.report.json)")
    ap.add_argument("--redistil-lr", type=float, default=5e-4,
                    help="peak LR of --redistil-draft's fresh cosine schedule (warm-up "
                         "--d-warmup2 steps, floor 5 %%)")
    ap.add_argument("--gen-cache", type=Path, default=None,
                    help="--redistil-draft: load the target's continuations from this file if it "
                         "was written with the same settings, else generate and save them")
    ap.add_argument("--no-baseline-eval", dest="baseline_eval", action="store_false",
                    help="--redistil-draft: skip evaluating the committed draft")
    ap.add_argument("--fast-eval-prompts", type=int, default=128,
                    help="--redistil-draft: prompts per fast speculative check (0: none)")
    ap.add_argument("--fast-eval-short-len", type=int, default=8,
                    help="--redistil-draft: tokens of the short prompts of the fast check")
    a = ap.parse_args()

    if a.threads not in ("1", "2", "auto") and not a.threads.isdigit():
        sys.exit("error: --threads must be a number or 'auto'")
    if a.threads == "auto" and (a.minutes_target is None or a.minutes_draft is None):
        sys.exit("error: --threads auto needs --minutes-target and --minutes-draft")
    torch.set_num_threads(2 if a.threads == "auto" else int(a.threads))
    if a.eval_only:
        eval_only(a)
        return
    if a.counts_only:
        counts_only(a)
        return
    if a.redistil_draft:
        redistil_draft(a)
        return
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    report: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v)
                                       for k, v in vars(a).items()},
                              "versions": versions()}

    # ---- corpus ------------------------------------------------------------------------
    docs = extract_corpus(a.doc_root)
    train_docs, test_docs = split_docs(docs, a.seed, a.heldout_frac)
    train_texts = [t for _, t in train_docs]
    test_texts = [t for _, t in test_docs]
    corpus_sha = hashlib.sha256("\x00".join(f"{n}\x01{t}" for n, t in docs).encode()).hexdigest()
    log(f"corpus: {len(docs)} pages, {sum(len(t.encode()) for _, t in docs)} bytes; "
        f"held out {len(test_docs)} pages ({sum(len(t.encode()) for t in test_texts)} bytes)")

    tok = train_tokenizer(train_texts, a.vocab)
    train_stream = encode_docs(tok, train_texts)
    test_stream = encode_docs(tok, test_texts)
    log(f"tokenizer: vocab {tok.get_vocab_size()}; train {len(train_stream)} tokens, "
        f"held-out {len(test_stream)} tokens")
    report["corpus"] = {
        "source": "Python 3.11 documentation HTML (Debian package python3.11-doc, "
                  f"{a.doc_root}), main body text extracted with html.parser",
        "licence": "PSF License Agreement (Python documentation); see "
                   "/usr/share/doc/python3.11/copyright",
        "pages": len(docs), "bytes": sum(len(t.encode()) for _, t in docs),
        "sha256": corpus_sha,
        "train_pages": len(train_docs), "train_bytes": sum(len(t.encode()) for t in train_texts),
        "train_tokens": int(len(train_stream)),
        "heldout_pages": [n for n, _ in test_docs],
        "heldout_bytes": sum(len(t.encode()) for t in test_texts),
        "heldout_tokens": int(len(test_stream)),
        "bytes_per_token": round(sum(len(t.encode()) for t in train_texts) / len(train_stream), 3),
    }
    report["tokenizer"] = {"type": "byte-level BPE (tokenizers)", "vocab_size": tok.get_vocab_size(),
                           "specials": {"<unk>": 0, "<s>": 1, "</s>": 2},
                           "adds_bos": True, "document_format": "<s> text </s>, concatenated"}

    # ---- models ------------------------------------------------------------------------
    torch.manual_seed(a.seed)
    target = MixtralForCausalLM(target_config(a, a.vocab)).float()
    torch.manual_seed(a.seed + 100)
    draft = LlamaForCausalLM(draft_config(a, a.vocab)).float()
    t_read = decode_read_params(target, "target")
    d_read = decode_read_params(draft, "draft")
    report["shapes"] = {
        "target": {"arch": "MixtralForCausalLM", "hidden": a.t_hidden, "layers": a.t_layers,
                   "heads": a.t_heads, "kv_heads": a.t_kv_heads, "head_dim": a.t_hidden // a.t_heads,
                   "experts": 8, "top_k": 2, "expert_intermediate": a.t_inter, "vocab": a.vocab,
                   "ctx": a.ctx, "tied_embeddings": False, "params": n_params(target),
                   "params_per_decode_token": t_read},
        "draft": {"arch": "LlamaForCausalLM", "hidden": a.d_hidden, "layers": a.d_layers,
                  "heads": a.d_heads, "kv_heads": a.d_kv_heads, "head_dim": a.d_hidden // a.d_heads,
                  "intermediate": a.d_inter, "vocab": a.vocab, "ctx": a.ctx,
                  "tied_embeddings": True, "params": n_params(draft),
                  "params_per_decode_token": d_read},
        "target_over_draft_decode_read": round(t_read["decode_read"] / d_read["decode_read"], 2),
    }
    log(f"target {n_params(target) / 1e6:.2f}M params ({t_read['decode_read'] / 1e6:.2f}M read per "
        f"decode token), draft {n_params(draft) / 1e6:.2f}M ({d_read['decode_read'] / 1e6:.2f}M); "
        f"ratio {report['shapes']['target_over_draft_decode_read']}")

    # ---- training ----------------------------------------------------------------------
    report["target_training"] = train_target(a, target, draft, train_stream, a.seed)
    log(f"target done: {report['target_training']['steps']} steps, "
        f"{report['target_training']['seconds'] / 60:.1f} min")
    target.eval()
    for p in target.parameters():
        p.requires_grad_(False)
    # the draft distils from the target as it will be shipped (bf16-rounded weights)
    with torch.no_grad():
        for p in target.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    gen = None
    if a.gen_seqs > 0:
        t_gen = time.time()
        gen = generate_target_data(a, target, train_stream, a.seed)
        report["target_generations"] = {
            "sequences": int(gen.shape[0]), "prompt_tokens": a.gen_prompt_len + 1,
            "new_tokens": a.gen_new, "decoding": "greedy",
            "prompts": "random windows of the training split",
            "seconds": round(time.time() - t_gen, 1)}
    report["draft_training"] = train_draft(a, target, draft, train_stream, a.seed, gen)
    log(f"draft done: {report['draft_training']['steps']} steps, "
        f"{report['draft_training']['seconds'] / 60:.1f} min")
    report["reproduce_note"] = (
        "step counts as used by this run; with --threads auto the thread count varied, so a "
        "fixed-thread rerun matches statistically, not bitwise" if a.threads == "auto" else
        "bitwise reproducible on the same software versions and thread count")
    report["reproduce"] = (f"python tools/train_pair.py --out-dir {a.out_dir} --seed {a.seed} "
                           f"--threads {a.threads if a.threads != 'auto' else 2} "
                           f"--target-steps {report['target_training']['steps']} "
                           f"--draft-steps {report['draft_training']['steps']}")

    # ---- export ------------------------------------------------------------------------
    tdir, ddir = a.out_dir / "tiny-mixtral", a.out_dir / "tiny-draft"
    export(target, tok, tdir, a.ctx)
    export(draft, tok, ddir, a.ctx)
    write_token_counts(tok, train_stream, ddir)
    report["export"] = check_export(tdir, ddir, target)
    report["export"]["target_bytes"] = dir_size(tdir)
    report["export"]["draft_bytes"] = dir_size(ddir)
    log(f"exported: {tdir} {dir_size(tdir) / 1e6:.1f} MB, {ddir} {dir_size(ddir) / 1e6:.1f} MB")
    del target, draft

    # ---- evaluation on the saved checkpoints --------------------------------------------
    t_eval = time.time()
    report.update(evaluate(a, tdir, ddir, test_stream, tok))
    report["eval_seconds"] = round(time.time() - t_eval, 1)
    report["total_seconds"] = round(time.time() - T0, 1)
    write_json(a.out_dir / "train_report.json", report)
    (a.out_dir / "train_report.json").chmod(0o644)
    log(f"wrote {a.out_dir / 'train_report.json'}")


if __name__ == "__main__":
    main()
