"""Model presets: Llama-style ``transformers.LlamaConfig`` shapes from test size to ~1B.

``PRESETS.get("smollm2-135m")(vocab_size=...)`` returns a config; ``build_model`` turns it
into a randomly initialised ``LlamaForCausalLM`` (SDPA attention). Published shapes copy the
``config.json`` of each model card; the small ``llama-*`` shapes come from one documented
rule, :func:`family_shape`, which also turns a plan's parameter budget into a config.

Naming: published models keep their published names (``smollm2-135m`` counts every
parameter); the ``llama-10m/30m/60m`` names count *non-embedding* parameters (Kaplan et al.
2020's N), because at SmolLM2's 49,152-token vocabulary the embedding alone is 12.6M
parameters at width 256 — a "10M" model by total count would be all embedding.
``llm4all models presets`` prints both counts.
"""

from __future__ import annotations

import math
from typing import Any

from llm4all.catalog import PRESETS
from llm4all.errors import UserError, did_you_mean

#: SmolLM2's tokenizer (Allal et al. 2025): the default, so students share the teacher's vocab
SMOLLM2_VOCAB = 49152
#: keyword options every preset accepts (anything else is a user error naming these)
OPTIONS = ("vocab_size", "max_position_embeddings", "tie_word_embeddings", "rope_theta", "sliding_window",
           "attention_sinks")
#: SmolLM2-135M's width / depth, 576 / 30 (Allal et al. 2025, Table 1; HF model card)
SMOLLM2_ASPECT = 576 / 30
HEAD_DIM = 64  # SmolLM2-135M/360M and Llama-3.2-1B all use 64-dim heads


def llama_config(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, *,
                 vocab_size: int = SMOLLM2_VOCAB, max_position_embeddings: int = 8192,
                 tie_word_embeddings: bool = True, rope_theta: float = 100000.0,
                 head_dim: int = HEAD_DIM, rope_parameters: dict | None = None, sliding_window: int = 0,
                 attention_sinks: int = 0, **options: Any):
    """A ``LlamaConfig`` — a ``MistralConfig`` (the same decoder with a sliding window, Jiang et al.
    2023) when ``sliding_window`` is set, ``attention_sinks`` kept beside it (``models/window.py``);
    ``options`` beyond :data:`OPTIONS` are rejected with a clear error."""
    from transformers import LlamaConfig, MistralConfig

    for key in options:
        raise UserError(f"preset option {key!r} is not supported; {did_you_mean(key, list(OPTIONS))}")
    if attention_sinks and not sliding_window:
        raise UserError("preset option attention_sinks needs sliding_window (sinks are kept beside a window)")
    rope = dict(rope_parameters or {"rope_type": "default"}, rope_theta=float(rope_theta))
    fields = dict(
        vocab_size=int(vocab_size), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
        head_dim=head_dim, max_position_embeddings=int(max_position_embeddings),
        tie_word_embeddings=bool(tie_word_embeddings), rope_parameters=rope, rms_norm_eps=1e-5,
        hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if not sliding_window:
        return LlamaConfig(**fields)
    return MistralConfig(**fields, sliding_window=int(sliding_window), attention_sinks=int(attention_sinks))


def family_shape(hidden: int, layers: int) -> dict[str, int]:
    """SmolLM2-family shape of a given width and depth: 64-dim heads, grouped KV, 8/3 MLP.

    heads = hidden / 64; kv_heads = the smallest divisor of heads that is >= heads / 3
    (SmolLM2-135M: 9 heads, 3 KV heads); intermediate = 8/3 · hidden rounded up to a multiple
    of 64 (the SwiGLU width of Shazeer 2020 as used by LLaMA, Touvron et al. 2023; SmolLM2-135M:
    8/3 · 576 = 1536).
    """
    heads = max(1, hidden // HEAD_DIM)
    kv = next(d for d in range(1, heads + 1) if heads % d == 0 and 3 * d >= heads)
    return {"hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv,
            "intermediate": HEAD_DIM * math.ceil(8 * hidden / 3 / HEAD_DIM)}


def _layer_params(s: dict[str, int]) -> int:
    """Parameters of one decoder layer: q, k, v, o, gate, up, down and two RMSNorm gains."""
    h, hd = s["hidden"], HEAD_DIM
    return 2 * h * s["heads"] * hd + 2 * h * s["kv_heads"] * hd + 3 * h * s["intermediate"] + 2 * h


def shape_for(params: float, *, vocab_size: int = 0, tied: bool = True) -> dict[str, int]:
    """The SmolLM2-family shape with about ``params`` parameters.

    ``vocab_size=0`` counts non-embedding parameters only (Kaplan's N); otherwise ``params`` is
    the total including the embedding (and an untied head). Rule: for every width that is a
    multiple of 64 (128 ... 4096) take the depth whose count is closest to ``params``; among
    the widths landing within 10% of it, pick the one whose width/depth is closest (in log) to
    SmolLM2-135M's 576/30 (if none lands within 10%, the closest count wins). It gives back
    SmolLM2-135M's exact shape for its own total, 134.5M at vocab 49152.
    """
    if params <= 0:
        raise UserError(f"parameter budget must be positive, got {params}")
    candidates = []
    for hidden in range(128, 4097, 64):
        rest = params - vocab_size * hidden * (1 if tied else 2) - hidden  # minus final norm
        per_layer = _layer_params(family_shape(hidden, 1))
        if rest < per_layer / 2:
            continue
        shape = family_shape(hidden, max(1, round(rest / per_layer)))
        n = shape["layers"] * per_layer + hidden + vocab_size * hidden * (1 if tied else 2)
        aspect = hidden / shape["layers"] / SMOLLM2_ASPECT
        candidates.append((abs(math.log(n / params)), abs(math.log(aspect)), shape))
    if not candidates:
        raise UserError(f"{params:.3g} parameters is below the smallest shape (width 128, one layer) "
                        f"at vocab {vocab_size}; lower --vocab-size or raise the budget")
    near = [c for c in candidates if c[0] <= math.log(1.1)]
    best = min(near, key=lambda c: c[1]) if near else min(candidates, key=lambda c: c[0])
    return best[2]


def _from_shape(shape: dict[str, int], **options: Any):
    return llama_config(**shape, **options)


@PRESETS.register("llama-test")
def llama_test(**options: Any):
    """Test size: hidden 64, 2 layers, 4 heads of 16, 2 KV heads, MLP 128 (for unit tests)."""
    return llama_config(64, 2, 4, 2, 128, head_dim=16, **{"max_position_embeddings": 512, **options})


@PRESETS.register("llama-10m")
def llama_10m(**options: Any):
    """~10M non-embedding params, SmolLM2-family rule (shape_for): hidden 256, 14 layers."""
    return _from_shape(shape_for(10e6), **options)


@PRESETS.register("llama-30m")
def llama_30m(**options: Any):
    """~30M non-embedding params, SmolLM2-family rule (shape_for): hidden 384, 19 layers."""
    return _from_shape(shape_for(30e6), **options)


@PRESETS.register("llama-60m")
def llama_60m(**options: Any):
    """~60M non-embedding params, SmolLM2-family rule (shape_for): hidden 448, 25 layers."""
    return _from_shape(shape_for(60e6), **options)


@PRESETS.register("llama-10m-swa")
def llama_10m_swa(**options: Any):
    """llama-10m with a 256-token sliding window and 4 attention sinks (Mistral-style, StreamingLLM)."""
    return _from_shape(shape_for(10e6), **{"sliding_window": 256, "attention_sinks": 4, **options})


@PRESETS.register("llama-30m-swa")
def llama_30m_swa(**options: Any):
    """llama-30m with a 512-token sliding window and 4 attention sinks (Mistral-style, StreamingLLM)."""
    return _from_shape(shape_for(30e6), **{"sliding_window": 512, "attention_sinks": 4, **options})


@PRESETS.register("smollm2-135m")
def smollm2_135m(**options: Any):
    """SmolLM2-135M (Allal et al. 2025; HF model card config.json): 576 × 30, 9/3 heads, tied."""
    return llama_config(576, 30, 9, 3, 1536, **options)


@PRESETS.register("smollm2-360m")
def smollm2_360m(**options: Any):
    """SmolLM2-360M (Allal et al. 2025; HF model card config.json): 960 × 32, 15/5 heads, tied."""
    return llama_config(960, 32, 15, 5, 2560, **options)


@PRESETS.register("llama-1b")
def llama_1b(**options: Any):
    """Llama-3.2-1B shape (Meta model card config.json): 2048 × 16, 32/8 heads, 128k vocab, tied."""
    defaults = {"vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0}
    llama3_rope = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return llama_config(2048, 16, 32, 8, 8192, rope_parameters=llama3_rope, **{**defaults, **options})


def preset(name: str, **options: Any):
    """The config of preset ``name`` with ``options`` (vocab_size, ...) applied."""
    return PRESETS.get(name)(**options)


def count_parameters(config) -> dict[str, int]:
    """Embedding, non-embedding and total parameters of a Llama-style config, by arithmetic.

    Embedding = vocab × hidden (twice if the LM head is untied); non-embedding = per layer
    q/k/v/o (+ biases if ``attention_bias``), gate/up/down (+ biases if ``mlp_bias``) and two
    RMSNorm gains, plus the final norm. Equals ``sum(p.numel())`` of the built model.
    """
    h, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, (config.num_key_value_heads or config.num_attention_heads) * hd
    i = config.intermediate_size
    attn = 2 * h * q + 2 * h * kv + ((q + 2 * kv + h) if getattr(config, "attention_bias", False) else 0)
    mlp = 3 * h * i + ((2 * i + h) if getattr(config, "mlp_bias", False) else 0)
    non_embedding = L * (attn + mlp + 2 * h) + h
    embedding = V * h * (1 if config.tie_word_embeddings else 2)
    return {"embedding": embedding, "non_embedding": non_embedding, "total": embedding + non_embedding}


def from_plan(plan: dict, **options: Any):
    """A config from ``llm4all plan ... --out`` JSON: its ``arch`` if given, else its ``params``.

    ``plan memory`` writes ``arch`` (hidden, layers, heads, kv_heads, intermediate, vocab, ...):
    that exact shape is used. ``plan chinchilla`` writes ``params`` (total N, embedding included,
    as Chinchilla counts): :func:`shape_for` picks the SmolLM2-family shape at the vocabulary in
    ``options`` (default 49,152), tied embeddings.
    """
    if not isinstance(plan, dict):
        raise UserError(f"plan: expected a mapping (the JSON of `llm4all plan ... --out`), got {plan!r}")
    if isinstance(plan.get("arch"), dict):
        a = plan["arch"]
        try:
            shape = {"hidden": int(a["hidden"]), "layers": int(a["layers"]), "heads": int(a["heads"]),
                     "kv_heads": int(a.get("kv_heads") or a["heads"]), "intermediate": int(a["intermediate"])}
        except KeyError as e:
            raise UserError(f"plan: arch is missing {e.args[0]!r} (need hidden, layers, heads, "
                            "intermediate)") from None
        defaults = {"vocab_size": int(a.get("vocab") or SMOLLM2_VOCAB),
                    "tie_word_embeddings": bool(a.get("tied_embeddings", True)),
                    "max_position_embeddings": int(a.get("max_position") or 8192)}
        head_dim = int(a.get("head_dim") or shape["hidden"] // shape["heads"])
        return llama_config(**shape, head_dim=head_dim, **{**defaults, **options})
    if "params" not in plan:
        raise UserError(f"plan: no 'arch' or 'params' key (have: {', '.join(plan) or 'none'}); "
                        "write one with `llm4all plan chinchilla ... --out plan.json`")
    vocab = int(options.get("vocab_size", SMOLLM2_VOCAB))
    tied = bool(options.get("tie_word_embeddings", True))
    return _from_shape(shape_for(float(plan["params"]), vocab_size=vocab, tied=tied), **options)


def build_model(config, seed: int = 0, dtype: str = "float32"):
    """A randomly initialised ``LlamaForCausalLM`` (``MistralForCausalLM`` with a window; SDPA
    attention) from ``config``.

    The seed is applied inside a forked RNG, so building a model leaves the global torch RNG
    untouched; the same seed gives the same weights.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from llm4all.models.load import DTYPES, windowed

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; valid: float32, bfloat16, float16")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa",
                                                 dtype=getattr(torch, DTYPES[dtype]))
    return windowed(model).eval()


def presets(vocab_size: int = 0) -> list[dict]:
    """List the model presets with their shapes and parameter counts.

    Args:
        vocab_size: count with this vocabulary instead of each preset's own (0: its own).
    """
    from rich.console import Console
    from rich.table import Table

    rows = []
    for name in PRESETS.names():
        c = preset(name, **({"vocab_size": vocab_size} if vocab_size else {}))
        n = count_parameters(c)
        rows.append({"name": name, "hidden": c.hidden_size, "layers": c.num_hidden_layers,
                     "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads,
                     "intermediate": c.intermediate_size, "vocab": c.vocab_size, **n})
    table = Table(title="model presets (M = 10^6 parameters)")
    for col in ("name", "hidden", "layers", "heads", "kv", "mlp", "vocab", "non-emb", "total"):
        table.add_column(col, style="bold" if col == "name" else None, no_wrap=True,
                         justify="left" if col == "name" else "right")
    for r in sorted(rows, key=lambda r: r["total"]):
        table.add_row(r["name"], *(str(r[k]) for k in ("hidden", "layers", "heads", "kv_heads",
                                                       "intermediate", "vocab")),
                      f"{r['non_embedding'] / 1e6:.1f}M", f"{r['total'] / 1e6:.1f}M")
    Console().print(table)
    return rows
