"""The diversity coefficient of a data set (Lee et al. 2023, "Beyond Scale: the Diversity
Coefficient as a Data Quality Metric Demonstrates LLMs are Pre-trained on Formally Diverse
Data", arXiv:2306.13840): the expected distance between Task2Vec embeddings of random batches.

Task2Vec (Achille et al. 2019, "Task2Vec: Task Embedding for Meta-Learning", sec. 2-3): a
batch is embedded by the diagonal of the Fisher information of a fixed probe network,

    F = E_{x ~ batch} E_{y ~ p_w(y|x)} [ (d/dw log p_w(y|x))^2 ],

with the labels y *sampled from the model* (the true Fisher, not the empirical one). For a
causal LM, x is a document's first ``max_tokens`` tokens and y one token sampled from the
model's next-token distribution at every position; log p is the mean over positions, as in
Lee et al.'s code (their sampled target is off by one position; ours is drawn from the same
distribution it is scored under). The Fisher is estimated per document (one backward each)
and averaged over the batch. Like Task2Vec, each weight matrix is summarised "filter-wise":
the mean of F over each output unit's row, so the embedding has one entry per output unit.

Parameters probed: the last decoder block and the final norm (6,912 filters for SmolLM2-135M).
Lee et al. use all of GPT-2 after fine-tuning its LM head on each batch; we keep the
pre-trained head (a causal LM already has the head of its task, and the Fisher with sampled
labels needs no optimum) and the top block, whose features are the most data-specific and
whose gradient costs one block's backward. The input embedding / tied head (V x H) is left
out: its Fisher is mostly a histogram of the sampled tokens.

Distance (Achille et al. 2019, sec. 3, "symmetric Task2Vec distance"; Lee et al.'s
``task_similarity.cosine``): d(Fa, Fb) = cos_dist(Fa / (Fa + Fb), Fb / (Fa + Fb)), in [0, 1].
The coefficient is its mean over the pairs of ``num_batches`` batches, with two 95% intervals:
Student-t over the pair distances (what Lee et al. report; pairs share batches, so it is
optimistic) and a bootstrap over batches (resampled batches, distinct pairs only).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from llm4all.errors import UserError
from llm4all.runs import MANIFEST, read_manifest, write_json, write_manifest

BOOTSTRAP_SAMPLES = 2000


def probe_parameters(model) -> list:
    """The probed parameters: every parameter of the last decoder block and of the final norm.

    The blocks are the decoder's ModuleList of ``num_hidden_layers`` modules (Llama ``layers``,
    GPT-2 ``h``); "final norm" is any other non-embedding parameter of the decoder.
    """
    import torch

    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    blocks = [m for m in backbone.children() if isinstance(m, torch.nn.ModuleList)]
    if not blocks:
        raise UserError(f"{type(model).__name__}: no list of decoder blocks to probe")
    params = list(blocks[-1][-1].parameters())
    skip = {id(p) for m in (blocks[-1], *[m for m in backbone.modules()
                                          if isinstance(m, torch.nn.Embedding)])
            for p in m.parameters()}
    params += [p for p in backbone.parameters() if id(p) not in skip]
    return params


def document_fisher(model, ids, params, generator) -> np.ndarray:
    """Filter-wise diagonal Fisher of ``params`` for one document (``ids``: (T,) LongTensor).

    Returns a float64 vector with one entry per output unit of each parameter (a 1-D
    parameter, e.g. a norm's gain, is one entry per element).
    """
    import torch
    import torch.nn.functional as F

    from llm4all.models.device import model_device

    logits = model(input_ids=ids[None].to(model_device(model))).logits[0, :-1].float()  # (T-1, V)
    with torch.no_grad():
        y = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]  # y ~ p_w(.|x)
    loss = F.cross_entropy(logits, y)  # mean over positions of -log p_w(y_t | x_<=t)
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.double().pow(2).reshape(g.shape[0], -1).mean(1) for g in grads]).cpu().numpy()


def task2vec_distance(fa: np.ndarray, fb: np.ndarray) -> float:
    """Symmetric Task2Vec distance: cosine distance of Fa/(Fa+Fb) and Fb/(Fa+Fb), in [0, 1]."""
    total = fa + fb
    a = np.divide(fa, total, out=np.zeros_like(fa), where=total > 0)
    b = np.divide(fb, total, out=np.zeros_like(fb), where=total > 0)
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(min(1.0, max(0.0, 1.0 - a @ b / norm))) if norm > 0 else 0.0


def pairwise_distances(embeddings: np.ndarray) -> np.ndarray:
    """(n, n) symmetric matrix of Task2Vec distances between the rows of ``embeddings``."""
    n = len(embeddings)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            d[i, j] = d[j, i] = task2vec_distance(embeddings[i], embeddings[j])
    return d


def coefficient_with_ci(d: np.ndarray, seed: int = 0) -> dict:
    """Mean off-diagonal distance, its Student-t 95% CI over pairs and a bootstrap one over batches."""
    from scipy import stats

    n = len(d)
    pairs = d[np.triu_indices(n, k=1)]
    mean = float(pairs.mean())
    half = (float(stats.t.ppf(0.975, len(pairs) - 1) * pairs.std(ddof=1) / math.sqrt(len(pairs)))
            if len(pairs) > 1 else float("nan"))
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(BOOTSTRAP_SAMPLES):
        idx = rng.integers(0, n, n)  # batches resampled with replacement
        distinct = idx[:, None] != idx[None, :]  # a batch paired with its own copy is no pair
        if distinct.any():
            boot.append(d[idx][:, idx][distinct].mean())
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diversity_coefficient": mean, "ci95": [mean - half, mean + half],
            "ci95_bootstrap": [float(lo), float(hi)], "pairs": len(pairs)}


def diversity_coefficient(texts: list[str], probe: str = "smollm2-135m", num_batches: int = 10,
                          batch_size: int = 8, max_tokens: int = 128, seed: int = 0) -> dict:
    """Diversity coefficient of ``texts`` with ``probe`` (a registered name or an HF directory).

    Batches are ``batch_size`` distinct documents each, disjoint when the data has at least
    ``num_batches * batch_size`` usable documents (>= 2 tokens), otherwise drawn independently.
    """
    import torch

    from llm4all.curate.signals.model import cached_model
    from llm4all.models.device import model_device

    if num_batches < 2 or batch_size < 1 or max_tokens < 2:
        raise UserError(f"diversity: need num_batches >= 2, batch_size >= 1, max_tokens >= 2; "
                        f"got {num_batches}, {batch_size}, {max_tokens}")
    model, tok = cached_model(str(probe), "float32")
    ids = [x[:max_tokens] for x in tok(list(texts), add_special_tokens=False)["input_ids"]]
    pool = [x for x in ids if len(x) >= 2]
    if len(pool) < batch_size:
        raise UserError(f"diversity: {len(pool)} documents with at least 2 tokens "
                        f"(of {len(ids)}); need at least batch_size={batch_size}")
    rng = np.random.default_rng(seed)
    disjoint = len(pool) >= num_batches * batch_size
    order = rng.permutation(len(pool))
    batches = ([order[k * batch_size : (k + 1) * batch_size] for k in range(num_batches)]
               if disjoint else
               [rng.choice(len(pool), batch_size, replace=False) for _ in range(num_batches)])
    params = probe_parameters(model)
    flags = [p.requires_grad for p in model.parameters()]
    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    start = time.perf_counter()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        embeddings = np.stack([
            np.mean([document_fisher(model, torch.tensor(pool[i]), params, generator)
                     for i in batch], axis=0)
            for batch in batches])  # (num_batches, filters)
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    result = coefficient_with_ci(pairwise_distances(embeddings), seed)
    return {**result, "probe": str(probe), "num_batches": num_batches, "batch_size": batch_size,
            "max_tokens": max_tokens, "seed": seed, "documents": len(ids),
            "usable_documents": len(pool), "disjoint_batches": disjoint,
            "embedding_dim": int(embeddings.shape[1]),
            "probe_parameters": int(sum(p.numel() for p in params)),
            "seconds": round(time.perf_counter() - start, 2)}


def reservoir(texts, k: int, seed: int) -> list[str]:
    """A uniform random sample of ``k`` items of a stream (Vitter 1985, Algorithm R), in order."""
    rng = np.random.default_rng(seed)
    kept: list[tuple[int, str]] = []
    for n, text in enumerate(texts):
        if n < k:
            kept.append((n, text))
        else:
            j = int(rng.integers(0, n + 1))
            if j < k:
                kept[j] = (n, text)
    return [t for _, t in sorted(kept)]


def main(data: list[Path], *, probe: str = "smollm2-135m", num_batches: int = 10,
         batch_size: int = 8, max_tokens: int = 128, seed: int = 0, device: str = "auto",
         out: Path | None = None) -> dict:
    """Diversity coefficient of a data set: mean Task2Vec distance between random batches.

    Args:
        data: document files or folders (jsonl(.gz/.zst), parquet, txt, saved HF datasets).
        probe: the probe LM: a registered name or an HF model directory.
        num_batches: how many random batches to embed (pairs = n(n-1)/2).
        batch_size: documents per batch.
        max_tokens: tokens per document (the first ones).
        seed: seed of the document sample, the batches and the sampled labels.
        device: where the probe runs: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
        out: directory for diversity.json (nothing written if not given).
    """
    from rich.console import Console
    from rich.table import Table

    from llm4all.data.readers import read_documents
    from llm4all.models.device import device_env

    if num_batches < 2 or batch_size < 1:
        raise UserError("--num-batches must be at least 2 and --batch-size at least 1")
    manifest = Path(out) / MANIFEST if out is not None else None
    if manifest and manifest.exists() and (read_manifest(out) or {}).get("command") != "diversity":
        raise UserError(f"{manifest} belongs to another stage (or not to llm4all); "
                        "give --out a folder of its own")
    texts = reservoir((d.text for d in read_documents(data)), num_batches * batch_size, seed)
    with device_env(device):
        coefficient = diversity_coefficient(texts, probe, num_batches, batch_size, max_tokens, seed)
    result = {"data": [str(p) for p in data], **coefficient}
    table = Table(title=f"diversity coefficient (Lee et al. 2023) of {', '.join(result['data'])}")
    for col in ("batches x docs", "coefficient", "95% CI (t, pairs)", "95% CI (bootstrap)",
                "seconds"):
        table.add_column(col, justify="right")
    lo, hi = result["ci95"]
    blo, bhi = result["ci95_bootstrap"]
    table.add_row(f"{num_batches} x {batch_size}",
                  f"{result['diversity_coefficient']:.4f}", f"[{lo:.4f}, {hi:.4f}]",
                  f"[{blo:.4f}, {bhi:.4f}]", f"{result['seconds']:.1f}")
    Console().print(table)
    if out is not None:
        write_json(Path(out) / "diversity.json", result)
        write_manifest(out, "diversity", inputs={"data": result["data"], "probe": probe},
                       files={"result": "diversity.json"},
                       metrics={k: result[k] for k in ("diversity_coefficient", "ci95", "ci95_bootstrap",
                                                       "documents", "usable_documents", "seconds")})
    return result
