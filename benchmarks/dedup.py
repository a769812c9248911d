"""Near-duplicate removal: llm4all MinHash + LSH against datasketch's MinHash + MinHashLSH.

Claim (issue 4): at the same threshold and num_perm, llm4all dedups at least 3× as many
documents per second as datasketch, with near-duplicate recall on planted copies at least
datasketch's.

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
matched is ≥ threshold, over all removals. "llm4all+v" verifies candidates (estimated
Jaccard ≥ threshold) before joining them.

Run: .venv/bin/python benchmarks/dedup.py [--docs 20000] [--threshold 0.8] [--num-perm 128]
"""

from __future__ import annotations

import argparse
import glob
import random
import re
import time
from pathlib import Path

from llm4all.curate.dedup.exact import normalize
from llm4all.curate.dedup.lsh import MinHashDedup
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
    texts: list[str], threshold: float, num_perm: int, seed: int, verify: bool = False
) -> dict[int, int]:
    dedup = MinHashDedup(threshold=threshold, num_perm=num_perm, seed=seed, verify=verify)
    decisions = dedup((str(i), t) for i, t in enumerate(texts))
    return {int(d.id): int(d.reason["survivor"]) for d in decisions if not d.keep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000, help="original documents (at most)")
    parser.add_argument("--plant", type=float, default=0.1, help="fraction given copies")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3, help="permutation seeds averaged over")
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
        **{f"r@{r:.0%}": {i for i, (_, _, x) in copies.items() if x == r} for r in RATES},
    }
    impls = {
        "datasketch": run_datasketch,
        "llm4all": run_llm4all,
        "llm4all+v": lambda *a: run_llm4all(*a, verify=True),  # verified candidates
    }
    results = {}
    for impl, fn in impls.items():
        seconds, runs = 0.0, []
        for seed in range(1, args.seeds + 1):
            start = time.perf_counter()
            runs.append(fn(texts, args.threshold, args.num_perm, seed))
            seconds += time.perf_counter() - start
        precision = [
            sum(i in copies or true_jaccard(texts[i], texts[j]) >= args.threshold
                for i, j in removed.items()) / max(len(removed), 1)
            for removed in runs
        ]
        results[impl] = {
            "docs_per_s": len(texts) * len(runs) / seconds, "seconds": seconds / len(runs),
            "removed": sum(map(len, runs)) / len(runs),
            "precision": sum(precision) / len(runs),
            **{g: sum(i in removed for removed in runs for i in members)
               / max(len(members) * len(runs), 1) for g, members in groups.items()},
        }

    print(f"mean over {args.seeds} seeds; single = copies whose source has one copy; J>=t = "
          f"copies above the threshold; r@x = copies with x of their words edited")
    cols = ["docs_per_s", "seconds", "removed", "precision", *groups]
    print(f"{'impl':<11}" + "".join(f"{c.replace('docs_per_s', 'docs/s'):>10}" for c in cols))
    for impl, r in results.items():
        print(f"{impl:<11}" + "".join(
            f"{r[c]:>10.0f}" if c in ("docs_per_s", "removed") else f"{r[c]:>10.3f}"
            for c in cols))
    speedup = results["llm4all"]["docs_per_s"] / results["datasketch"]["docs_per_s"]
    print(f"speedup llm4all/datasketch: {speedup:.2f}x docs/s; recall "
          f"{results['llm4all']['recall']:.3f} vs {results['datasketch']['recall']:.3f}")


if __name__ == "__main__":
    main()
