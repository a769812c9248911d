"""Student initialisation from a teacher: a layer subset, optionally narrower by PCA.

Depth (DistilBERT, Sanh et al. 2019, sec. 3: "initialize the student from the teacher by
taking one layer out of two"): embeddings, the chosen decoder layers, the final norm and the
LM head are copied. ``every=k`` keeps layers 0, k, 2k, ... (the default k=2 keeps the even
layers 0, 2, ..., 28 of a 30-layer teacher, so the last layer is dropped; DistilBERT's
extraction script kept [0, 2, 4, 7, 9, 11] of 12 — pass ``layers`` for such a choice).

Width: one orthonormal basis P (d_teacher × d_student) of the residual stream, the top
principal directions (uncentred, as SliceGPT, Ashkboos et al. 2024, sec. 3) of the teacher's
embedding rows, or of its residual-stream states on calibration tokens when given. Every map
that reads the residual stream becomes W·diag(g)·P (the RMSNorm gain g folded in, SliceGPT
sec. 3.2), every map that writes it becomes Pᵀ·W, the embedding E·P. A student norm divides
by the RMS over d_student instead of d_teacher coordinates, so its gains are sqrt(d_t/d_s).
With tied embeddings the final gain cannot be folded (the head is the embedding): it becomes
the diagonal of sqrt(d_t/d_s)·Pᵀ·diag(g)·P, exact when P is a coordinate selection.

Heads keep their dimension; whole KV groups are kept by the weight norm of their heads' o_proj
columns, then the strongest query heads inside each group. MLP channels are kept by
‖gate_j‖·‖up_j‖·‖down_j‖ — weight-magnitude choices — unless activation importance measured
on calibration tokens is given (``importance``: Minitron, Muralidharan et al. 2024, computed by
``models.importance.width_importance``). Which layers to keep can be measured the same way
(``models.importance.select_layers_by_importance``: ShortGPT's block influence or the angular
distance of Gromov et al. 2024). Quality right after init is measured in docs/models.md.
"""

from __future__ import annotations

import copy
import math

import torch

from llm4all.errors import UserError

#: decoder families whose weights follow the Llama layout this module projects
SUPPORTED = ("llama", "mistral", "qwen2")


def select_layers(n_layers: int, layers: list[int] | None = None, every: int | None = None) -> list[int]:
    """Teacher layer indices to keep: ``layers`` as given, or 0, every, 2·every, ... (default 2)."""
    if layers is not None and every is not None:
        raise UserError("give --layers or --every, not both")
    if layers is None:
        every = 2 if every is None else every
        if every < 1:
            raise UserError(f"--every must be at least 1, got {every}")
        return list(range(0, n_layers, every))
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad or not layers:
        raise UserError(f"--layers must be teacher layer indices in 0..{n_layers - 1}, got {layers}")
    if sorted(set(layers)) != list(layers):
        raise UserError(f"--layers must be increasing and distinct, got {layers}")
    return list(layers)


@torch.no_grad()
def pca_basis(teacher, hidden_size: int, calibration_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(d_teacher, hidden_size) orthonormal columns: top eigenvectors of a second moment.

    Without calibration: EᵀE of the embedding rows E (V, d). With ``calibration_ids`` (B, T):
    the sum over every RMSNorm input (the residual-stream states the linear maps read) of
    XᵀX / trace(XᵀX), so deep layers with large norms do not drown the shallow ones.
    """
    if calibration_ids is None:
        E = teacher.get_input_embeddings().weight.double()  # (V, d)
        cov = E.T @ E
    else:
        cov, hooks = None, []

        def record(module, args):
            nonlocal cov
            x = args[0].reshape(-1, args[0].shape[-1]).double()  # (B·T, d)
            c = x.T @ x
            cov = c / c.trace() if cov is None else cov + c / c.trace()

        for name, module in teacher.named_modules():
            if name.endswith(("input_layernorm", "post_attention_layernorm")) or name == "model.norm":
                hooks.append(module.register_forward_pre_hook(record))
        try:
            teacher(input_ids=calibration_ids.to(teacher.device))
        finally:
            for h in hooks:
                h.remove()
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    return eigvecs[:, eigvals.argsort(descending=True)[:hidden_size]].float()


def _head_counts(config, hidden: int, heads: int | None, kv: int | None) -> tuple[int, int]:
    """(query heads, KV heads) of the student; defaults: the feasible count nearest H·d_s/d_t."""
    H, KV = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    group = H // KV

    def kv_for(h: int) -> int | None:  # fewest KV heads whose groups fit in the teacher's groups
        return next((k for k in range(1, KV + 1) if h % k == 0 and h // k <= group), None)

    if heads is None:
        target = H * hidden / config.hidden_size
        heads = min((h for h in range(1, H + 1) if kv_for(h)), key=lambda h: (abs(h - target), -h))
    kv = kv if kv is not None else kv_for(heads)
    if kv is None or not (1 <= kv <= KV and heads <= H and heads % kv == 0 and heads // kv <= group):
        raise UserError(f"cannot keep {heads} query heads in {kv} KV groups of a teacher with {H} heads "
                        f"in {KV} groups of {group}: need heads <= {H}, kv heads <= {KV}, heads a "
                        f"multiple of kv heads, at most {group} heads per group")
    return heads, kv


def _keep_heads(score: torch.Tensor, config, heads: int, kv: int) -> tuple[list[int], list[int]]:
    """(query heads, KV heads) to keep, in order, chosen by their scores (H,): whole KV groups by
    the sum of their heads' scores, then the strongest query heads inside each kept group."""
    H, KV = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    group = H // KV
    groups = sorted(score.reshape(KV, group).sum(1).argsort(descending=True)[:kv].tolist())
    q = [g * group + j for g in groups
         for j in sorted(score[g * group:(g + 1) * group].argsort(descending=True)[:heads // kv].tolist())]
    return q, groups


def _rows(n_heads_rows: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + i for h in n_heads_rows for i in range(head_dim)])


@torch.no_grad()
def student_from_teacher(teacher, *, layers: list[int] | None = None, every: int | None = None,
                         hidden_size: int | None = None, intermediate_size: int | None = None,
                         num_attention_heads: int | None = None, num_key_value_heads: int | None = None,
                         calibration_ids: torch.Tensor | None = None,
                         projection: torch.Tensor | None = None, importance: dict | None = None):
    """A student of the teacher's class: chosen layers, optionally narrower (module docstring).

    ``projection`` (d_teacher, d_student) overrides the PCA basis (tests pass I or a rotation).
    Defaults at a narrower width keep the teacher's ratios: heads ≈ H·d_s/d_t, MLP ≈ I·d_s/d_t.
    ``importance`` (``models.importance.width_importance``: per layer, head and MLP-channel
    activation scores) chooses the heads and channels kept instead of weight norms (Minitron).
    """
    cfg = teacher.config
    if cfg.model_type not in SUPPORTED:
        raise UserError(f"student init supports {', '.join(SUPPORTED)} models, not {cfg.model_type!r}")
    d, hd = cfg.hidden_size, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    keep = select_layers(cfg.num_hidden_layers, layers, every)
    m = projection.shape[1] if projection is not None else (hidden_size or d)
    if not 1 <= m <= d or (projection is not None and projection.shape[0] != d):
        raise UserError(f"--hidden-size must be in 1..{d} (the teacher's width), got {m}")
    inter = intermediate_size or (cfg.intermediate_size if m == d else round(cfg.intermediate_size * m / d))
    if not 1 <= inter <= cfg.intermediate_size:
        raise UserError(f"--intermediate-size must be in 1..{cfg.intermediate_size}, got {inter}")
    heads, kv = _head_counts(cfg, m, num_attention_heads, num_key_value_heads)
    P = projection if projection is not None else (pca_basis(teacher, m, calibration_ids) if m < d else None)
    t = {k: v.float() for k, v in teacher.state_dict().items()}
    tied = bool(cfg.tie_word_embeddings)
    scale = math.sqrt(d / m)  # RMS over m coordinates instead of d: see module docstring

    def reads(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # (out, d) -> (out, m)
        return w if P is None else (w * g) @ P

    def writes(w: torch.Tensor) -> torch.Tensor:  # (d, ...) -> (m, ...)
        return w if P is None else P.T @ w

    def gain(g: torch.Tensor) -> torch.Tensor:  # a norm whose gain was folded into its readers
        return g if P is None else torch.full((m,), scale)

    s = {"model.embed_tokens.weight": writes(t["model.embed_tokens.weight"].T).T}
    g = t["model.norm.weight"]
    if tied or P is None:
        s["model.norm.weight"] = g if P is None else scale * (P * (g[:, None] * P)).sum(0)
        s["lm_head.weight"] = s["model.embed_tokens.weight"] if tied else t["lm_head.weight"]
    else:
        s["model.norm.weight"], s["lm_head.weight"] = gain(g), reads(t["lm_head.weight"], g)
    for j, i in enumerate(keep):
        a, b = f"model.layers.{i}.", f"model.layers.{j}."
        g_in, g_post = t[a + "input_layernorm.weight"], t[a + "post_attention_layernorm.weight"]
        o_proj = t[a + "self_attn.o_proj.weight"]
        head_score = (importance[i]["heads"].float() if importance else
                      o_proj.reshape(o_proj.shape[0], cfg.num_attention_heads, -1).norm(dim=(0, 2)))  # (H,)
        q, kvh = _keep_heads(head_score, cfg, heads, kv)
        qr, kr = _rows(q, hd), _rows(kvh, hd)
        s[b + "input_layernorm.weight"] = gain(g_in)
        s[b + "post_attention_layernorm.weight"] = gain(g_post)
        for name, rows in (("q_proj", qr), ("k_proj", kr), ("v_proj", kr)):
            s[b + f"self_attn.{name}.weight"] = reads(t[a + f"self_attn.{name}.weight"][rows], g_in)
            if a + f"self_attn.{name}.bias" in t:
                s[b + f"self_attn.{name}.bias"] = t[a + f"self_attn.{name}.bias"][rows]
        s[b + "self_attn.o_proj.weight"] = writes(t[a + "self_attn.o_proj.weight"][:, qr])
        gate, up, down = (t[a + f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
        score = (importance[i]["channels"].float() if importance else
                 (gate * g_post).norm(dim=1) * (up * g_post).norm(dim=1) * down.norm(dim=0))  # (I,)
        ch = score.argsort(descending=True)[:inter].sort().values
        s[b + "mlp.gate_proj.weight"] = reads(gate[ch], g_post)
        s[b + "mlp.up_proj.weight"] = reads(up[ch], g_post)
        s[b + "mlp.down_proj.weight"] = writes(down[:, ch])
        for name in ("self_attn.o_proj", "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"):  # biases
            if a + name + ".bias" in t:
                bias = t[a + name + ".bias"]
                s[b + name + ".bias"] = writes(bias) if name.endswith(("o_proj", "down_proj")) else bias[ch]

    config = copy.deepcopy(cfg)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = len(keep), m, inter
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = heads, kv, hd
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    with torch.random.fork_rng(devices=[]):
        student = type(teacher)._from_config(config, attn_implementation="sdpa", dtype=teacher.dtype)
    missing = set(student.state_dict()) - set(s)
    if missing:
        raise UserError(f"cannot initialise these {cfg.model_type} weights from the teacher: "
                        f"{', '.join(sorted(missing)[:5])}")
    student.load_state_dict({k: s[k].to(teacher.dtype) for k in student.state_dict()}, strict=True)
    return student.to(teacher.device).eval()


def check_shared_vocabulary(teacher_tokenizer, student_tokenizer) -> None:
    """Raise UserError unless both tokenizers map the same tokens to the same ids (logit KD)."""
    t, s = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    fix = ("logit distillation compares the two distributions token by token; give the student "
           "the teacher's tokenizer (init-student copies it) or distil on teacher generations "
           "(sequence-level KD), which needs no shared vocabulary")
    if len(t) != len(s):
        raise UserError(f"teacher and student vocabularies differ in size ({len(t)} vs {len(s)} "
                        f"tokens); {fix}")
    diff = [tok for tok, i in t.items() if s.get(tok) != i]
    if diff:
        shown = ", ".join(f"{tok!r}: teacher {t[tok]}, student {s.get(tok)}" for tok in sorted(diff)[:3])
        raise UserError(f"teacher and student vocabularies map {len(diff)} tokens differently "
                        f"({shown}); {fix}")
