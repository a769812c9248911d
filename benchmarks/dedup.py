"""Near-duplicate removal: llm4all MinHash + LSH against datasketch's MinHash + MinHashLSH.

Claim (issue 4): at the same threshold and num_perm, llm4all dedups at least 3× as many
documents per second as datasketch, with near-duplicate recall on planted copies at least
datasketch's — and, with its default exact verification, no pair below the threshold joined.

Corpus: the demo corpus (data/demo/**/*.jsonl.zst) if built, else the Python 3.11
documentation sources (/usr/share/doc/python3.11-doc/html/_sources) cut into ~200-word
documents. A tenth of the documents get 1, 2 or 3 planted copies each (web duplicates come
in clusters), appended after all originals in random order: an exact copy with case and
whitespace changes, or a near copy whose words are deleted, inserted or substituted at a
rate of 1, 2, 5 or 10%. Both
implementations see the same documents in the same order, normalised and shingled the same
way (``normalize``, word 5-grams); datasketch uses its fast path (``MinHash.generator``,
shared permutations) and the usual stream: query the index, drop on any hit, else insert.

Recall = planted copies removed / planted copies, averaged over permutation seeds (the hash
families differ, so one seed's recall is one draw from the same LSH S-curve). Precision =
removals that are planted copies or whose true 5-gram Jaccard with the document they
matched is ≥ threshold, over all removals; prec@t = removals whose true Jaccard with the
document they matched is ≥ threshold (a planted copy edited below the threshold is not a
near-duplicate at t). Timed rows: datasketch; llm4all's default ``minhash`` (16 × 6 bands,
exact verification); ``verify: none`` (datasketch's 9 × 13 bands, unverified: the same
S-curve); ``verify: estimate`` (9 × 13, estimated Jaccard ≥ t). Ablations (untimed, from
the default's signatures): the 11 permutations 9 × 13 leaves over as a tenth band; the
recall banding 16 × 6 unverified, screened by the estimate ≥ t − 3σ, or by the estimate ≥ t.
The timed implementations run interleaved, seed by seed, so a shared machine's changing load
falls on all of them alike; the per-seed speed-ups are printed too.

Run: .venv/bin/python benchmarks/dedup.py [--docs 20000] [--threshold 0.8] [--num-perm 128]
"""

from __future__ import annotations

import argparse
import glob
import random
import re
import time
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from llm4all.curate.dedup.minhash import MinHashDedup, candidate_pairs, lsh_params, recall_params
from llm4all.curate.dedup.shingles import minhash_signatures, normalize
from llm4all.curate.planted import perturb

RATES = (0.0, 0.01, 0.02, 0.05, 0.10)  # word edit rates of planted copies (0 = exact copy)
DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
PYDOCS = Path("/usr/share/doc/python3.11-doc/html/_sources")


def load_corpus(limit: int) -> tuple[str, list[str]]:
    """(name, texts): the demo corpus if present, else Python docs cut into ~200-word docs."""
    files = sorted(glob.glob(str(DEMO / "**" / "*.jsonl.zst"), recursive=True))
    texts: list[str] = []
    if files:
        from llm4all.data.readers import read_documents

        texts = [doc.text for doc in read_documents(files)]
        return f"demo corpus ({len(files)} files)", texts[:limit]
    for f in sorted(PYDOCS.rglob("*.rst.txt")):
        chunk: list[str] = []
        for para in re.split(r"\n\s*\n", f.read_text(errors="replace")):
            chunk.append(para)
            if sum(len(p.split()) for p in chunk) >= 200:
                texts.append("\n\n".join(chunk))
                chunk = []
    return "Python 3.11 docs sources, ~200-word chunks", texts[:limit]


def shingles(text: str, n: int = 5) -> set[str]:
    words = normalize(text).split()
    return {" ".join(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))}


def true_jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def run_datasketch(
    texts: list[str], threshold: float, num_perm: int, seed: int
) -> dict[int, int]:
    """{removed index: matched index} with datasketch's query-then-insert stream."""
    from datasketch import MinHash, MinHashLSH

    def shingle_bytes(text: str) -> list[bytes]:
        w = normalize(text).split()
        return [" ".join(w[i : i + 5]).encode() for i in range(max(len(w) - 4, 1))]

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    removed: dict[int, int] = {}
    sets = (shingle_bytes(t) for t in texts)
    for i, m in enumerate(MinHash.generator(sets, num_perm=num_perm, seed=seed)):
        hits = lsh.query(m)
        if hits:
            removed[i] = min(hits)
        else:
            lsh.insert(i, m)
    return removed


def run_llm4all(
    texts: list[str], threshold: float, num_perm: int, seed: int, verify: str = "exact"
) -> dict[int, int]:
    dedup = MinHashDedup(threshold=threshold, num_perm=num_perm, seed=seed, verify=verify)
    decisions = dedup((str(i), t) for i, t in enumerate(texts))
    return {int(d.id): int(d.reason["survivor"]) for d in decisions if not d.keep}


def clusters(n: int, pairs: np.ndarray) -> dict[int, int]:
    """{removed index: first index of its connected component} for candidate ``pairs``."""
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    first = np.full(label.max() + 1, n)
    np.minimum.at(first, label, np.arange(n))
    return {i: int(first[c]) for i, c in enumerate(label) if first[c] != i}


def ablations(texts: list[str], threshold: float, num_perm: int, seeds: int) -> dict[str, list]:
    """{name: one removal dict per seed} for banding / screening variants without exactness."""
    (b0, r0), (b1, r1) = lsh_params(threshold, num_perm), recall_params(threshold, num_perm)
    sigma = (threshold * (1 - threshold) / num_perm) ** 0.5
    out: dict[str, list] = {f"{b0}x{r0}+1x{num_perm - b0 * r0} none": [], f"{b1}x{r1} none": [],
                            f"{b1}x{r1} est>=t-3s": [], f"{b1}x{r1} est>=t": []}
    for seed in range(1, seeds + 1):
        sig = minhash_signatures(texts, num_perm, 5, seed)
        extra = candidate_pairs(sig[:, b0 * r0 :], 1, num_perm - b0 * r0)
        pairs = np.unique(np.concatenate([candidate_pairs(sig, b0, r0), extra]), axis=0)
        loose = candidate_pairs(sig, b1, r1)
        est = np.mean(sig[loose[:, 0]] == sig[loose[:, 1]], axis=1)
        for name, p in zip(out, (pairs, loose, loose[est >= threshold - 3 * sigma],
                                 loose[est >= threshold]), strict=True):
            out[name].append(clusters(len(texts), p))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000, help="original documents (at most)")
    parser.add_argument("--plant", type=float, default=0.1, help="fraction given copies")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=5, help="permutation seeds averaged over")
    args = parser.parse_args()

    name, base = load_corpus(args.docs)
    rng = random.Random(0)
    vocab = sorted({w for t in base[:2000] for w in t.split()})
    sources = rng.sample(range(len(base)), int(args.plant * len(base)))
    # source k gets 1 + k % 3 copies; copy c of all copies is edited at rate RATES[c % 5]
    planted = [(src, 1 + k % 3) for k, src in enumerate(sources) for _ in range(1 + k % 3)]
    planted = [(src, n, RATES[c % len(RATES)]) for c, (src, n) in enumerate(planted)]
    rng.shuffle(planted)
    texts = base + [perturb(base[src], rate, vocab, rng) for src, _, rate in planted]
    copies = {len(base) + k: p for k, p in enumerate(planted)}  # index -> (source, n, rate)
    above = {i for i, (src, _, _) in copies.items()
             if true_jaccard(texts[i], texts[src]) >= args.threshold}
    n_words = sum(len(t.split()) for t in texts)
    print(f"corpus: {name}; {len(base)} originals + {len(planted)} planted copies of "
          f"{len(sources)} sources = {len(texts)} docs, {n_words / len(texts):.0f} words/doc; "
          f"{len(above)} copies have true 5-gram Jaccard >= {args.threshold} with their source; "
          f"threshold {args.threshold}, num_perm {args.num_perm}")

    groups = {  # recall columns: subsets of the planted copies
        "recall": set(copies),
        "single": {i for i, (_, n, _) in copies.items() if n == 1},
        "J>=t": above,
        "J<t": set(copies) - above,
        **{f"r@{r:.0%}": {i for i, (_, _, x) in copies.items() if x == r} for r in RATES},
    }
    impls = {
        "datasketch": run_datasketch,
        "llm4all": run_llm4all,  # default: recall banding + exact verification
        "l4a none": lambda *a: run_llm4all(*a, verify="none"),
        "l4a estimate": lambda *a: run_llm4all(*a, verify="estimate"),
    }
    runs: dict[str, list] = {impl: [] for impl in impls}
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for seed in range(1, args.seeds + 1):  # implementations interleaved: they share the load
        for impl, fn in impls.items():
            start = time.perf_counter()
            runs[impl].append(fn(texts, args.threshold, args.num_perm, seed))
            times[impl].append(time.perf_counter() - start)
    seconds = {impl: sum(t) for impl, t in times.items()}
    runs.update(ablations(texts, args.threshold, args.num_perm, args.seeds))

    jac: dict[tuple[int, int], float] = {}
    def similar(i: int, j: int) -> bool:
        if (i, j) not in jac:
            jac[i, j] = true_jaccard(texts[i], texts[j])
        return jac[i, j] >= args.threshold

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    results = {}
    for impl, seed_runs in runs.items():
        results[impl] = {
            "docs_per_s": len(texts) * len(seed_runs) / seconds[impl] if impl in seconds else 0.0,
            "removed": mean([len(r) for r in seed_runs]),
            "precision": mean([sum(i in copies or similar(i, j) for i, j in r.items())
                               / max(len(r), 1) for r in seed_runs]),
            "prec@t": mean([sum(similar(i, j) for i, j in r.items()) / max(len(r), 1)
                            for r in seed_runs]),
            **{g: mean([sum(i in r for i in members) / max(len(members), 1) for r in seed_runs])
               for g, members in groups.items()},
            "per_seed": [sum(i in r for i in copies) / len(copies) for r in seed_runs],
            "per_seed_above": [sum(i in r for i in above) / max(len(above), 1) for r in seed_runs],
        }

    print(f"mean over {args.seeds} seeds; single = copies whose source has one copy; J>=t / J<t = "
          f"copies above / below the threshold; r@x = copies with x of their words edited; "
          f"docs/s 0 = untimed ablation")
    cols = ["docs_per_s", "removed", "precision", "prec@t", *groups]
    print(f"{'impl':<18}" + "".join(f"{c.replace('docs_per_s', 'docs/s'):>9}" for c in cols))
    for impl, r in results.items():
        print(f"{impl:<18}" + "".join(
            f"{r[c]:>9.0f}" if c in ("docs_per_s", "removed") else f"{r[c]:>9.3f}" for c in cols))
    for impl in ("datasketch", "llm4all", "l4a none"):
        print(f"{impl:<12} per-seed recall " + " ".join(f"{x:.3f}" for x in results[impl]["per_seed"])
              + "; J>=t " + " ".join(f"{x:.3f}" for x in results[impl]["per_seed_above"]))
    ratios = [d / x for d, x in zip(times["datasketch"], times["llm4all"], strict=True)]
    print("per-seed speedup llm4all/datasketch " + " ".join(f"{r:.2f}x" for r in ratios))
    ds, l4a = results["datasketch"], results["llm4all"]
    wins = sum(a >= b for a, b in zip(l4a["per_seed"], ds["per_seed"], strict=True))
    print(f"speedup llm4all/datasketch: {l4a['docs_per_s'] / ds['docs_per_s']:.2f}x docs/s; recall "
          f"{l4a['recall']:.3f} vs {ds['recall']:.3f} (>= in {wins}/{args.seeds} seeds), J>=t "
          f"{l4a['J>=t']:.3f} vs {ds['J>=t']:.3f}; prec@t {l4a['prec@t']:.3f} vs {ds['prec@t']:.3f}")


if __name__ == "__main__":
    main()
