"""Peak memory of training and inference as a per-component breakdown that is SUMMED.

Model states (Rajbhandari et al. 2020, "ZeRO", Section 3.1): mixed-precision AdamW keeps
2 bytes of 16-bit weights + 2 of gradients + K = 12 of fp32 master copy and two moments per
parameter, (2 + 2 + K)·Ψ; ZeRO stage 1 shards the K part over N_d GPUs, stage 2 also the
gradients, stage 3 (= FSDP full sharding) also the weights.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", Section 4): per layer s·b·h·(34 + 5·a·s/h) bytes for a GPT layer with
16-bit activations and no recomputation, s·b·h·34 with selective recomputation (the a·s²
attention-score terms recomputed) and 2·s·b·h (layer inputs only) with full recomputation.
We keep their method — count every tensor autograd saves — but count it for the llama layer
as Hugging Face transformers implements it, because that is what llm4all trains:
  * RMSNorm (no dropout, no LayerNorm mean): saves its input upcast to fp32 (4 bytes), the
    normalised tensor cast back (e bytes) and its output (e, saved by the next matmul),
    i.e. (4 + 2e) bytes per element and norm, e = activation bytes (2 for bf16/fp16, 4 fp32);
  * attention with grouped-query heads: q (a·d_head), k and v (kv·d_head each, GQA), the
    attention output and its reshaped copy fed to o_proj, plus a fp32 log-sum-exp per row for
    flash/SDPA kernels; "math"/eager attention also keeps the a·s² probabilities;
  * SwiGLU MLP: gate output, SiLU output, up output and their product, 4·e bytes × s·b·I
    (a GELU MLP: 2·e·s·b·I);
  * logits: the vocabulary projection dominates small models. At the start of backward — the
    training peak, when every activation is still alive — the loss holds its fp32 log-softmax,
    the gradient flowing into it and the gradient of the logits (3 × 4 bytes per element),
    plus that gradient's 16-bit cast when e < 4. The logits themselves (e) are freed before
    backward when the loop keeps only the loss; a loop that keeps ``outputs`` adds e·s·b·V.
Full recomputation keeps each layer's input (e·s·b·h) plus one layer's activations rebuilt
during backward. Gradients are counted as allocated (``zero_grad(set_to_none=False)``); with
``set_to_none=True`` the real peak can be lower by up to the gradient size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llm4all.errors import UserError, did_you_mean
from llm4all.plan.arch import Arch

DTYPE_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5,
               "ternary": 1.58 / 8}  # BitNet b1.58: log2(3) ≈ 1.58 bits per weight
# A quantised KV cache as llm4all runs it (models/kvcache.py, KIVI: Liu et al. 2024): codes plus an
# fp16 scale and an fp16 minimum per group of 32 values, 4 bytes of constants per 32 values.
KV_GROUP_SIZE = 32


def kv_bytes_per_value(kv_dtype: str, group_size: int = KV_GROUP_SIZE) -> float:
    """Bytes one cached key or value element costs (int8/int4: codes + scales and minima)."""
    if kv_dtype in ("int8", "int4"):
        return DTYPE_BYTES[kv_dtype] + 2 * 2 / group_size
    return DTYPE_BYTES[kv_dtype]


# QLoRA as `train --lora-base int4` runs it (models/lora.py): 4-bit codes with a float16 scale
# and a uint8 zero point per group of 64 weights, 0.375 bits of constants per parameter on top of
# the 4 bits (Dettmers et al. 2023, section 3: NF4 with double quantisation stores 0.127).
QLORA_CONSTANT_BYTES = (16 + 8) / 64 / 8
# optimizer states per trainable parameter, in bytes, with fp32 states
OPTIMIZER_STATE_BYTES = {
    "adamw": 8.0,  # two fp32 moments (Loshchilov & Hutter 2019)
    "adamw8bit": 2.0 + 2 * 4 / 2048,  # two 8-bit moments + fp32 absmax per 2048-block (Dettmers 2022)
    "lion": 4.0,  # one fp32 momentum (Chen et al. 2023)
    "sgd": 4.0,  # fp32 momentum buffer
    "adafactor": 0.0,  # factored second moment: rows + cols per matrix (Shazeer & Stern 2018)
}
SHARDING = ("none", "zero1", "zero2", "zero3", "fsdp")
RECOMPUTE = ("none", "selective", "full")


FUSED_CHUNK = 1024  # positions per chunk of llm4all's fused head + loss (models/fused_ce.py)


@dataclass(frozen=True)
class Setup:
    """How a model is run: everything besides the architecture that decides memory."""

    mode: str = "train"  # "train" or "inference"
    batch: int = 1  # micro-batch per GPU (sequences)
    seq: int = 2048  # tokens per sequence (train) / prompt + generated tokens (inference)
    dtype: str = "bf16"  # weight and activation dtype
    master_weights: bool = True  # fp32 master copy for 16-bit training (mixed precision)
    optimizer: str = "adamw"
    recompute: str = "none"  # activation recomputation: none / selective / full
    attention: str = "flash"  # "flash" (SDPA/FlashAttention: no s² memory) or "math" (eager)
    lora_rank: int = 0  # > 0: train LoRA adapters on every linear layer, base frozen
    base_dtype: str = ""  # frozen base weights' dtype (QLoRA: "int4"); "" = dtype
    sharding: str = "none"  # ZeRO stage / FSDP over ``gpus``
    gpus: int = 1
    kv_dtype: str = ""  # KV-cache dtype; "" = dtype
    head: str = "hf"  # "hf": full (B·T, V) logits; "fused": llm4all's chunked head + loss

    def __post_init__(self):
        checks = {"mode": ("train", "inference"), "dtype": tuple(DTYPE_BYTES),
                  "optimizer": tuple(OPTIMIZER_STATE_BYTES), "recompute": RECOMPUTE,
                  "attention": ("flash", "math"), "sharding": SHARDING}
        for key, valid in checks.items():
            if getattr(self, key) not in valid:
                raise UserError(f"--{key}: {getattr(self, key)!r} is not valid; "
                                f"{did_you_mean(getattr(self, key), list(valid))}")
        for key in ("base_dtype", "kv_dtype"):
            v = getattr(self, key)
            if v and v not in DTYPE_BYTES:
                raise UserError(f"--{key.replace('_', '-')}: {v!r} is not valid; "
                                f"{did_you_mean(v, list(DTYPE_BYTES))}")
        for key in ("batch", "seq", "gpus"):
            if getattr(self, key) < 1:
                raise UserError(f"--{key} must be at least 1, got {getattr(self, key)}")
        if self.lora_rank < 0:
            raise UserError(f"--lora-rank must be >= 0, got {self.lora_rank}")
        if self.mode == "train" and self.dtype in ("int8", "int4", "ternary") and not self.lora_rank:
            raise UserError(f"--dtype {self.dtype} cannot be trained directly; use --lora-rank R "
                            f"with --base-dtype {self.dtype} (QLoRA-style) or a float dtype")

    def replace(self, **kw) -> Setup:
        return Setup(**{**asdict(self), **kw})


def zero_model_states(psi: float, gpus: int, stage: int, k: float = 12.0) -> float:
    """Bytes of model states per GPU (Rajbhandari et al. 2020, Figure 1): (2 + 2 + K)·Ψ."""
    if stage not in (0, 1, 2, 3):
        raise UserError(f"ZeRO stage must be 0-3, got {stage}")
    weights, grads, opt = 2 * psi, 2 * psi, k * psi
    if stage >= 1:
        opt /= gpus
    if stage >= 2:
        grads /= gpus
    if stage >= 3:
        weights /= gpus
    return weights + grads + opt


def _adapter_params(arch: Arch, rank: int) -> float:
    """LoRA (Hu et al. 2021): r·(rows + cols) per adapted matrix; every linear in the layers."""
    return sum(rank * (r + c) * n for name, r, c, n in arch.matrices()
               if name not in ("embed_tokens", "lm_head"))


def _adafactor_state(arch: Arch, trainable_matrices: list[tuple[int, int, int]], scalars: float) -> float:
    """Adafactor's factored second moment: fp32 row + column statistics per matrix."""
    return 4.0 * (sum((r + c) * n for r, c, n in trainable_matrices) + scalars)


def activation_bytes_per_layer(arch: Arch, s: int, b: int, e: float, recompute: str,
                               attention: str) -> float:
    """Bytes autograd keeps for one llama layer (see module docstring), no recomputation."""
    h, i = arch.hidden, arch.intermediate
    q_dim, kv_dim = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    norms = 2 * (4 + 2 * e) * s * b * h
    attn = e * s * b * (3 * q_dim + 2 * kv_dim) + 4 * b * arch.heads * s  # + fp32 log-sum-exp
    mlp = (4 if arch.mlp == "swiglu" else 2) * e * s * b * i
    scores = 0.0
    if attention == "math":
        # HF eager attention expands k and v to every query head (repeat_kv) before matmul
        attn += 2 * e * s * b * (q_dim - kv_dim)
        if recompute == "none":  # softmax probabilities a·s² (fp32, plus a cast copy if e < 4)
            scores = (4 + (e if e < 4 else 0)) * b * arch.heads * s * s
    return norms + attn + mlp + scores


def breakdown(arch: Arch, setup: Setup) -> dict[str, float]:
    """Per-component bytes on one GPU; the peak estimate is their sum."""
    e = DTYPE_BYTES[setup.dtype] if setup.dtype in ("fp32", "fp16", "bf16") else 2.0
    w_bytes = DTYPE_BYTES[setup.dtype]
    n_total = arch.n_params()
    emb_bytes = max(w_bytes, 2.0)  # embeddings/lm_head stay 16-bit when layers are quantised
    s, b, L = setup.seq, setup.batch, arch.layers
    shard = setup.gpus if setup.sharding != "none" else 1
    stage = {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}[setup.sharding]
    out: dict[str, float] = {}

    if setup.mode == "inference":
        base = DTYPE_BYTES[setup.base_dtype] if setup.base_dtype else w_bytes
        n_emb = arch.n_embedding()
        out["weights"] = (n_total - n_emb) * base + n_emb * emb_bytes
        kv = kv_bytes_per_value(setup.kv_dtype or ("bf16" if e == 2 else "fp32"))
        out["kv_cache"] = 2 * L * arch.kv_heads * arch.head_dim * s * b * kv
        # transient working set of one layer's forward (SwiGLU: 3 live s·b·I tensors)
        out["activations"] = e * s * b * (3 * arch.intermediate + 4 * arch.hidden)
        out["logits"] = b * arch.vocab * (e + 4)  # last position only (generation), + fp32 copy
        return out

    # --- model states ---------------------------------------------------------------
    mixed = setup.master_weights and w_bytes < 4
    state_bytes = OPTIMIZER_STATE_BYTES[setup.optimizer]
    if setup.optimizer in ("adamw", "lion", "sgd") and not setup.master_weights and w_bytes < 4:
        state_bytes *= w_bytes / 4  # torch keeps optimizer states in the parameter dtype
    if setup.lora_rank:
        base = DTYPE_BYTES[setup.base_dtype or setup.dtype]
        n_emb = arch.n_embedding()
        frozen = (n_total - n_emb) * base + n_emb * emb_bytes
        if setup.base_dtype in ("int4", "ternary"):
            frozen += (n_total - n_emb) * QLORA_CONSTANT_BYTES
        trainable = _adapter_params(arch, setup.lora_rank)
        out["weights"] = frozen / (shard if stage == 3 else 1) + trainable * 4.0
        out["gradients"] = trainable * 4.0  # adapters train in fp32 (PEFT upcasts them)
        mats = [(setup.lora_rank, r + c, n) for name, r, c, n in arch.matrices()
                if name not in ("embed_tokens", "lm_head")]
        out["optimizer_states"] = (_adafactor_state(arch, mats, 0) if setup.optimizer == "adafactor"
                                   else trainable * OPTIMIZER_STATE_BYTES[setup.optimizer])
        out["master_weights"] = 0.0
    else:
        out["weights"] = n_total * w_bytes / (shard if stage == 3 else 1)
        out["gradients"] = n_total * w_bytes / (shard if stage >= 2 else 1)
        if setup.optimizer == "adafactor":
            mats = [(r, c, n) for _, r, c, n in arch.matrices()]
            opt = _adafactor_state(arch, mats, arch.vectors())
        else:
            opt = n_total * state_bytes
        out["optimizer_states"] = opt / (shard if stage >= 1 else 1)
        out["master_weights"] = (4.0 * n_total if mixed else 0.0) / (shard if stage >= 1 else 1)
    if stage == 3:  # ZeRO-3/FSDP gather one layer's full weights (+ one prefetched)
        per_layer = (n_total - arch.n_embedding()) / L
        out["gathered_layers"] = 2 * per_layer * DTYPE_BYTES[setup.base_dtype or setup.dtype]

    # --- activations (Korthikanti et al. 2022, adapted; see module docstring) -------------
    layer = activation_bytes_per_layer(arch, s, b, e, setup.recompute, setup.attention)
    # full recomputation: layer inputs + one layer rebuilt during backward
    acts = L * e * s * b * arch.hidden + layer if setup.recompute == "full" else L * layer
    acts += (4 + 2 * e) * s * b * arch.hidden  # final norm
    if setup.attention == "math":
        acts += 4 * b * s * s  # the 4-D additive causal mask eager attention builds once
    out["activations"] = acts
    if setup.head == "fused":  # models/fused_ce.py: FUSED_CHUNK positions at a time, never (B·T, V)
        c, half = min(FUSED_CHUNK, s * b), e if e < 4 else 0
        # a chunk's logits (e bytes) and their fp32 softmax, then the softmax and its e-byte copy;
        # (V, H): the fp32 weight gradient, its e-byte compute copy, a chunk's product in e and
        # fp32, and in backward a tied embedding's own dense gradient before the two are summed
        out["logits"] = (c * arch.vocab * (4 + half) + arch.vocab * arch.hidden * (12 + 2 * half)
                         + 4 * s * b * arch.hidden)
    else:
        out["logits"] = s * b * arch.vocab * (12 + (e if e < 4 else 0))
    return out


def total(parts: dict[str, float]) -> float:
    """The peak estimate: the SUM of the components (never their maximum)."""
    return float(sum(parts.values()))
