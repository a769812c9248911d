"""Sliding-window attention (Mistral) and attention sinks (StreamingLLM) as model options.

**Sliding window.** Each query attends to the ``window`` most recent tokens, itself included
(Jiang et al. 2023, "Mistral 7B", sec. 2: the hidden state at position i of layer k attends to
positions i − W … i of layer k − 1, so information still travels up to k · W tokens through
the layers). transformers implements it for the Mistral architecture — a Llama with a
``sliding_window`` in its config — with a mask and a cache bounded to the window
(``DynamicSlidingWindowLayer``: W − 1 keys and values per layer, however long the text).
:func:`with_window` turns a Llama into that Mistral, reusing its modules (so packed int4/int8
layers stay what they are), or sets the window of a Mistral; the saved checkpoint is an ordinary
Mistral checkpoint that transformers and vLLM read with its window.

**Attention sinks.** Xiao et al. ("Efficient Streaming Language Models with Attention Sinks",
ICLR 2024) find that models dump attention on the first tokens whatever they say, and that a
window that evicts them degrades sharply; keeping ``sinks`` initial tokens visible to every
query beside the window keeps quality (sec. 3.2; 4 sinks in the paper), and pre-training with
them makes it a property of the model (sec. 3.3). With ``attention_sinks = K`` a query sees
the first K tokens of its sequence (of its conversation, in packed windows) and the W most recent
ones. transformers has no such mask, so a forward pre-hook (:func:`install_sinks`) gives the
decoder the 4-D additive mask itself (``window_mask``) on every call — training, perplexity,
tasks and generation alike. Generation keeps the cache bounded with StreamingLLM's cache
(:class:`SinkLayer`: the K sinks and the last W − 1 tokens, positions assigned within the cache
and keys re-rotated on every read, so no error accumulates across evictions; the text can then
outgrow the model's trained length, as in the paper).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from llm4all.errors import UserError

WINDOWED_TYPES = ("llama", "mistral")


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class SinkLayer(DynamicLayer):
    """One layer's StreamingLLM cache: un-rotated fp32 keys and values, rotated by slot on every read."""

    is_croppable = False

    def __init__(self, rotary):
        super().__init__()
        self.rotary, self.raw, self.values, self.is_initialized = rotary, None, None, True
        self.evicted = 0

    def _cos_sin(self, like, start: int, n: int):
        pos = torch.arange(start, start + n, device=like.device)[None]  # (1, n) slots
        cos, sin = self.rotary(like.float(), pos)  # (1, n, D), including the attention scaling s
        return cos[:, None], sin[:, None], float(self.rotary.attention_scaling)

    def update(self, key_states, value_states, *args, **kwargs):
        """Append keys rotated at slots L..L+n-1; return all keys rotated at slots 0..L+n-1."""
        L, n = self.get_seq_length(), key_states.shape[-2]
        cos, sin, s = self._cos_sin(key_states, L, n)
        k = key_states.float()
        raw = (k * cos - _rotate_half(k) * sin) / (s * s)  # R(-p)/s^2 undoes s*R(p)
        self.raw = raw if self.raw is None else torch.cat([self.raw, raw], dim=-2)
        self.values = value_states if self.values is None else torch.cat([self.values, value_states], dim=-2)
        cos, sin, _ = self._cos_sin(key_states, 0, L + n)
        keys = self.raw * cos + _rotate_half(self.raw) * sin
        return keys.to(key_states.dtype), self.values

    def get_seq_length(self) -> int:
        return 0 if self.raw is None else self.raw.shape[-2]

    def evict(self, n_sink: int, window: int) -> None:
        """Keep the first ``n_sink`` and the last ``window`` entries."""
        n = self.get_seq_length()
        if n > n_sink + window:
            keep = lambda t: torch.cat([t[..., :n_sink, :], t[..., t.shape[-2] - window:, :]], dim=-2)  # noqa: E731
            self.raw, self.values = keep(self.raw), keep(self.values)
            self.evicted += n - n_sink - window

    def keep_first(self, n: int) -> None:
        """Forget every entry after the first ``n`` (only before any eviction, or all of them)."""
        if n == 0:
            self.raw = self.values = None
            self.evicted = 0
        elif self.evicted:
            raise RuntimeError("cannot cut a sink cache back to a prefix once it has evicted tokens")
        elif self.raw is not None:
            self.raw, self.values = self.raw[..., :n, :], self.values[..., :n, :]


def sink_cache(model, n_sink: int, window: int):
    """A transformers ``Cache`` of ``SinkLayer``s for ``model`` (evict with ``evict_all``)."""
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "attention_scaling"):
        raise UserError("attention sinks need a Llama-style rotary embedding; "
                        f"{type(model).__name__} has none")
    if "dynamic" in str(getattr(rotary, "rope_type", "")):
        raise UserError("attention sinks need a fixed RoPE; dynamic NTK scaling changes it with the length")
    if n_sink < 0 or window < 1:
        raise UserError(f"--sinks must be >= 0 and --window >= 1, got {n_sink} and {window}")
    cache = Cache(layers=[SinkLayer(rotary) for _ in range(model.config.num_hidden_layers)])
    cache.n_sink, cache.window = n_sink, window
    return cache


def evict_all(cache) -> bool:
    """Evict past the sinks + window in every layer; True if anything was evicted."""
    before = [layer.evicted for layer in cache.layers]
    for layer in cache.layers:
        layer.evict(cache.n_sink, cache.window)
    return [layer.evicted for layer in cache.layers] != before


def window_mask(batch: int, q_len: int, past: int, window: int, sinks: int, dtype: torch.dtype,
                device, position_ids: torch.Tensor | None = None,
                padding: torch.Tensor | None = None) -> torch.Tensor:
    """The (batch, 1, q_len, past + q_len) additive mask: 0 where a query may attend, else the
    dtype's minimum.

    Query i (at index past + i) sees key j when j ≤ past + i and (past + i − j < window or j is one
    of the first ``sinks``). ``position_ids`` without a cache (packed training windows) restart at
    0 for each sequence: a query sees only its own sequence, and the sinks are each sequence's
    first tokens. ``padding`` is the 2-D (batch, past + q_len) mask of real tokens.
    """
    q = torch.arange(past, past + q_len, device=device)[None, :, None]
    k = torch.arange(past + q_len, device=device)[None, None, :]
    if position_ids is not None and past == 0:
        pos = position_ids.to(device)
        starts = torch.ones_like(pos, dtype=torch.bool)
        starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
        seq = starts.cumsum(-1)
        same = seq[:, :, None] == seq[:, None, :]
        allowed = (k <= q) & same & ((pos[:, :, None] - pos[:, None, :] < window) | (pos[:, None, :] < sinks))
    else:
        allowed = ((k <= q) & ((q - k < window) | (k < sinks))).expand(batch, -1, -1)
    if padding is not None:
        allowed = allowed & padding.to(device).bool()[:, None, :]
        allowed = allowed | (~allowed.any(-1, keepdim=True) & (k == q))  # a padded query sees itself
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def _sinks_hook(module, args, kwargs):
    """Give the decoder the sliding window + sinks mask (transformers has none for sinks)."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    x = ids if ids is not None else kwargs["inputs_embeds"]
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    past = cache.get_seq_length() if cache is not None else 0
    padding = kwargs.get("attention_mask")
    if padding is not None and padding.dim() == 4:
        return args, kwargs  # a caller's own 4-D mask wins
    config = module.config
    dtype = module.embed_tokens.weight.dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    kwargs["attention_mask"] = window_mask(x.shape[0], x.shape[1], past, config.sliding_window,
                                           config.attention_sinks, dtype, x.device,
                                           kwargs.get("position_ids"), padding)
    return args, kwargs


def install_sinks(model) -> None:
    """Make every forward of ``model`` use the sliding window + sinks mask (idempotent)."""
    decoder = model.model
    if getattr(decoder, "_llm4all_sinks_hook", None) is None:
        decoder._llm4all_sinks_hook = decoder.register_forward_pre_hook(_sinks_hook, with_kwargs=True)


def _as_mistral(model):
    """A ``MistralForCausalLM`` made of ``model``'s modules (a Llama without biases)."""
    from transformers import MistralConfig, MistralForCausalLM

    cfg = model.config
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise UserError("--sliding-window: this Llama has attention or MLP biases; Mistral has none")
    fields = {k: v for k, v in cfg.to_dict().items() if k not in ("attention_bias", "mlp_bias",
                                                                   "pretraining_tp", "model_type",
                                                                   "architectures", "transformers_version")}
    mistral_cfg = MistralConfig(**fields)
    mistral_cfg._attn_implementation = cfg._attn_implementation
    with torch.device("meta"):
        net = MistralForCausalLM(mistral_cfg)
    net.model.embed_tokens, net.model.norm = model.model.embed_tokens, model.model.norm
    net.model.rotary_emb, net.lm_head = model.model.rotary_emb, model.lm_head
    for new, old in zip(net.model.layers, model.model.layers, strict=True):
        new.input_layernorm, new.post_attention_layernorm = old.input_layernorm, old.post_attention_layernorm
        new.mlp = old.mlp
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(new.self_attn, name, getattr(old.self_attn, name))
    net.generation_config = model.generation_config
    net.train(model.training)
    return net


def with_window(model, window: int, sinks: int = 0):
    """``model`` attending to its ``window`` most recent tokens (+ its first ``sinks``): a Mistral
    sharing the Llama's modules, or the same Mistral with its window set. ``window`` 0 with
    ``sinks`` 0 returns the model unchanged."""
    if window < 0 or sinks < 0:
        raise UserError(f"--sliding-window and --attention-sinks must be >= 0, got {window} and {sinks}")
    if not window:
        if sinks:
            raise UserError("--attention-sinks needs --sliding-window (sinks are kept beside a window)")
        return model
    kind = getattr(model.config, "model_type", "")
    if kind not in WINDOWED_TYPES:
        raise UserError(f"--sliding-window: {kind or type(model).__name__} models are not supported; "
                        f"valid: {', '.join(WINDOWED_TYPES)}")
    net = _as_mistral(model) if kind == "llama" else model
    net.config.sliding_window, net.config.attention_sinks = int(window), int(sinks)
    if sinks:
        install_sinks(net)
    return net


def windowed_cache(model):
    """The generation cache of a windowed model: StreamingLLM's (sinks + window − 1, evicted with
    ``evict_all`` after each forward) when it has sinks, else ``None`` (transformers' own
    ``DynamicCache`` bounds a sliding window)."""
    sinks = getattr(model.config, "attention_sinks", 0) or 0
    if not sinks:
        return None
    return sink_cache(model, sinks, model.config.sliding_window - 1)
