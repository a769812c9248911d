"""Which model to ship: the recipe's goal applied to the measured variants, and ``answer.json``.

A variant can be recommended only if it was measured on the run's common ground: perplexity
from an ``eval perplexity`` stage (the same held-out tokens for every model), its file size,
and its batch-1 decode latency in the runtime it would ship in (llm4all's int4/int8 kernels,
or llama.cpp for a GGUF). Among those, the goal keeps the models within ``tolerance`` of the
best perplexity and picks, on that quality / size / speed Pareto front, the one it
``prefer``-s: by default the smallest and fastest, the least product of file size and decode
latency (a 5% larger file that decodes twice as fast wins); or the smallest file (ties: the
fastest), the fastest, or the best perplexity. Pure functions over ``collect.variants`` output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from llm4all.errors import UserError

#: manifest roles as answer.json names them (a from-scratch model is the baseline)
ANSWER_ROLES = {"teacher": "teacher", "adapted": "adapted", "student": "student", "scratch": "baseline",
                "compressed": "compressed", "export": "compressed", "model": "model"}


PREFER = ("balanced", "size", "speed", "quality")


@dataclass(frozen=True)
class Goal:
    """What the recipe wants of the shipped model."""

    tolerance: float = 0.10
    """perplexity at most this fraction above the best measured one."""
    prefer: Literal["balanced", "size", "speed", "quality"] = "balanced"
    """among those: the least size × latency, the smallest file (ties: fastest), the fastest
    decode, or the lowest perplexity."""

    @classmethod
    def parse(cls, goal: dict | None) -> Goal:
        goal = dict(goal or {})
        unknown = sorted(set(goal) - {"tolerance", "prefer"})
        if unknown:
            raise UserError(f"--goal: unknown key {unknown[0]!r}; valid: tolerance, prefer")
        out = cls(**goal)
        if not 0 <= out.tolerance < 10 or out.prefer not in PREFER:
            raise UserError(f"--goal: tolerance in [0, 10) and prefer one of {', '.join(PREFER)}; "
                            f"got {goal}")
        return out


def eval_ppl(v: dict) -> float | None:
    """Perplexity from an eval perplexity stage (the common tokens), not a training loop's own."""
    return v["ppl"] if str(v.get("ppl_source") or "").startswith("eval") else None


def measured(v: dict) -> bool:
    return eval_ppl(v) is not None and v.get("size_bytes") is not None and v.get("latency_ms") is not None


def pareto(variants: list[dict]) -> list[dict]:
    """The variants no other beats on perplexity, size and latency at once (lower is better)."""
    def key(v: dict) -> tuple[float, float, float]:
        return eval_ppl(v), v["size_bytes"], v["latency_ms"]

    def dominates(a: dict, b: dict) -> bool:
        return all(x <= y for x, y in zip(key(a), key(b), strict=True)) and key(a) != key(b)

    return [v for v in variants if not any(dominates(o, v) for o in variants if o is not v)]


def recommend(variants: list[dict], goal: Goal) -> tuple[dict | None, str]:
    """(the variant to ship, one sentence why) — None and the reason when nothing qualifies."""
    candidates = [v for v in variants if measured(v)]
    if not candidates:
        return None, ("no model has perplexity (eval perplexity), size and decode latency (eval speed) "
                      "all measured, so none can be recommended")
    # the bar is the best perplexity of any model, timed or not: an untimed model that reads
    # better still shows what the budget can reach, and a shipped model must come close to it
    best = min((v for v in variants if eval_ppl(v) is not None), key=eval_ppl)
    limit = eval_ppl(best) * (1 + goal.tolerance)
    front = [v for v in pareto(candidates) if eval_ppl(v) <= limit]
    if not front:
        pick = min(candidates, key=eval_ppl)
        return pick, (f"No timed model is within {goal.tolerance:.0%} of the best perplexity "
                      f"({eval_ppl(best):.4g}, {best['name']}{'' if measured(best) else ', not timed'}); "
                      f"{pick['name']} comes closest: perplexity {eval_ppl(pick):.4g} "
                      f"({100 * (eval_ppl(pick) / eval_ppl(best) - 1):+.1f}%), "
                      f"{pick['size_bytes'] / 2**20:,.1f} MiB, {pick['latency_ms']:.1f} ms per token "
                      f"at batch 1. "
                      f"Time the best model (eval speed) or raise the goal's tolerance.")
    order = {"balanced": lambda v: (v["size_bytes"] * v["latency_ms"], v["size_bytes"]),
             "size": lambda v: (v["size_bytes"], v["latency_ms"]),
             "speed": lambda v: (v["latency_ms"], v["size_bytes"]),
             "quality": lambda v: (eval_ppl(v), v["size_bytes"])}[goal.prefer]
    pick = min(front, key=order)
    return pick, why(pick, best, variants, goal)


def why(pick: dict, best: dict, variants: list[dict], goal: Goal) -> str:
    teacher = next((v for v in variants if v.get("kind") == "teacher" and measured(v)), None)
    want = {"balanced": "the smallest and fastest", "size": "the smallest", "speed": "the fastest",
            "quality": "the best"}[goal.prefer]
    text = (f"{pick['name']} is {want} model within {goal.tolerance:.0%} of the best perplexity "
            f"({eval_ppl(best):.4g}, {best['name']}): perplexity {eval_ppl(pick):.4g}, "
            f"{pick['size_bytes'] / 2**20:,.1f} MiB, {pick['latency_ms']:.1f} ms per token at batch 1"
            f" ({pick.get('runtime') or 'torch'})")
    if teacher is not None and teacher is not pick:
        smaller = teacher["size_bytes"] / pick["size_bytes"]
        faster = teacher["latency_ms"] / pick["latency_ms"]
        text += (f"; against the teacher {teacher['name']}: {smaller:.1f}× smaller, decodes {faster:.1f}× "
                 f"as fast, perplexity {100 * (eval_ppl(pick) / eval_ppl(teacher) - 1):+.1f}%")
    return text + "."


def ship_commands(pick: dict | None, variants: list[dict]) -> dict[str, str]:
    """The exact commands to chat with and serve the recommended model, and to serve it with vLLM.

    A GGUF runs in llama.cpp as it is; a packed or HF model is chatted with in process, served
    through its GGUF export when the run made one (else ``llm4all serve`` exports it once), and
    exported as compressed-tensors for vLLM on a GPU.
    """
    if pick is None or not pick.get("path"):
        return {}
    path = pick["path"]
    gguf = path if path.endswith(".gguf") else next(
        (v["path"] for v in variants if v.get("kind") == "export" and str(v.get("path", "")).endswith(".gguf")
         and v.get("source") == pick["name"]), None)
    packed = path if not path.endswith(".gguf") else next(
        (v["path"] for v in variants if v["name"] == pick.get("source") and v.get("path")), None)
    out = {"chat": f"llm4all chat {path}", "serve": f"llm4all serve {gguf or path} --port 8080"}
    if gguf:
        out["llama_server"] = f"llama-server --model {gguf} --port 8080 --jinja --cont-batching --parallel 4"
    if packed:
        out["vllm"] = f"llm4all export {packed} --format hf --out model-hf && vllm serve model-hf"
    return out


def answer_json(variants: list[dict], goal: Goal) -> dict[str, Any]:
    """The machine-readable answer of a run (the shape issue #15 asks for)."""
    pick, reason = recommend(variants, goal)
    teacher = next((v for v in variants if v.get("kind") == "teacher"), None)
    return {"teacher": teacher["name"] if teacher else None,
            "recommended": pick["name"] if pick else None, "why": reason,
            "commands": ship_commands(pick, variants),
            "goal": {"tolerance": goal.tolerance, "prefer": goal.prefer},
            "variants": [{"name": v["name"], "role": ANSWER_ROLES.get(v.get("kind") or "model", "model"),
                          "ppl": eval_ppl(v), "file_bytes": v.get("size_bytes"), "params": v.get("params"),
                          "decode_ms_per_token": v.get("latency_ms"), "runtime": v.get("runtime"),
                          "peak_rss_bytes": int(v["peak_mib"] * 2**20) if v.get("peak_mib") else None,
                          "joules_per_token": v.get("joules_per_token"),
                          "energy_source": v.get("energy_source"),
                          "train_flops": v.get("train_flops"), "path": v.get("path")}
                         for v in variants]}
