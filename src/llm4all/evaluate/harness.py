"""lm-evaluation-harness adapter: any model ``llm4all.models.load`` accepts, as an lm-eval ``LM``.

``Llm4allLM`` implements lm-eval's three request types (``lm_eval/api/model.py``, v0.4):
``loglikelihood`` (the same batched scorer as ``llm4all eval tasks``), ``loglikelihood_rolling``
(strided windows of ``evaluate.perplexity``) and ``generate_until`` (greedy ``generate`` cut
at the first stop string). Compressed checkpoints work as long as ``load`` gives back a
transformers causal LM.

Offline use: lm-eval's standard tasks download their data from the Hugging Face Hub, so here
they run only where that data is already cached. ``lm_eval_config`` turns an llm4all local task
(YAML + JSONL, ``evaluate/tasks.py``) into an lm-eval task config reading the JSONL through
``datasets``' json loader, which needs no network. ``pip install lm-eval`` (tested: 0.4.13).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from llm4all.errors import UserError


def _lm_base():
    try:
        from lm_eval.api.model import LM
    except ImportError as e:
        raise UserError("the lm-eval adapter needs lm-evaluation-harness: pip install lm-eval") from e
    return LM


class Llm4allLM(_lm_base()):
    """An lm-eval ``LM`` over an llm4all model (a name, an HF dir, a .gguf, or a loaded model)."""

    def __init__(self, model="smollm2-135m", tokenizer=None, dtype: str = "float32", batch_size: int = 16,
                 max_length: int | None = None, device: str = "auto"):
        super().__init__()
        if isinstance(model, str | Path):
            from llm4all.models.device import resolve_device
            from llm4all.models.load import load

            model, tokenizer = load(model, dtype=dtype, device=str(resolve_device(device)))
        if tokenizer is None:
            raise UserError("Llm4allLM: pass the tokenizer with an already loaded model")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, int(batch_size)
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", 2048)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        from llm4all.evaluate.tasks import loglikelihoods

        scores = loglikelihoods(self.model, self.tokenizer, [r.args for r in requests], self.batch_size,
                                self.max_length)
        return [(ll, greedy) for ll, greedy, _ in scores]

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Summed log-likelihood of each whole string, conditioned on a BOS/EOS prefix token."""
        import numpy as np

        from llm4all.evaluate.perplexity import perplexity

        prefix = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None \
            else self.tokenizer.eos_token_id
        out = []
        for (text,) in (r.args for r in requests):
            ids = [prefix] + self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) < 2:
                out.append(0.0)
                continue
            context = min(len(ids), self.max_length)
            r = perplexity(self.model, np.asarray(ids), context=context, stride=max(1, context // 2),
                           batch_size=self.batch_size)
            out.append(-r["nll"] * r["tokens"])
        return out

    def generate_until(self, requests) -> list[str]:
        """Greedy continuation of each context, up to ``max_gen_toks`` tokens or a stop string."""
        import torch

        from llm4all.models.device import model_device

        out = []
        for context, kwargs in (r.args for r in requests):
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", 256))
            ids = self.tokenizer(context, add_special_tokens=False, return_tensors="pt")["input_ids"]
            ids = ids.to(model_device(self.model))
            ids = ids[:, -(self.max_length - budget):] if ids.shape[1] + budget > self.max_length else ids
            with torch.inference_mode():
                gen = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=budget, pad_token_id=self.tokenizer.eos_token_id)
            text = self.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
            cuts = [text.index(s) for s in until if s and s in text]
            out.append(text[: min(cuts)] if cuts else text)
        return out


def lm_eval_config(task) -> dict:
    """An lm-eval task config (dict) equivalent to an llm4all local task; reads its JSONL offline."""
    jinja = lambda s: re.sub(r"\{(\w+)\}", r"{{\1}}", s)  # noqa: E731  str.format fields -> Jinja
    config = {"task": task.name, "dataset_path": "json",
              "dataset_kwargs": {"data_files": {"test": str(task.data)}}, "test_split": "test",
              "doc_to_text": jinja(task.template), "target_delimiter": task.target_delimiter,
              "metadata": {"version": 1.0}}
    if task.type == "cloze":
        # lm-eval adds no delimiter to a loglikelihood target (its lambada puts the space in the target)
        target = "{{" + repr(task.target_delimiter) + " + " + task.answer + "}}"
        metrics = [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                   {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
        return {**config, "output_type": "loglikelihood", "doc_to_target": target, "metric_list": metrics}
    choices = task.choices if isinstance(task.choices, list) else "{{" + task.choices + "}}"
    return {**config, "output_type": "multiple_choice", "doc_to_choice": choices,
            "doc_to_target": "{{" + task.answer + "}}",
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                            for m in ("acc", "acc_norm")]}


def main(
    model: str,
    *,
    tasks: list[str] | None = None,
    dtype: Literal["float32", "bfloat16"] = "float32",
    batch_size: int = 16,
    limit: int | None = None,
    device: str = "auto",
    out: Path | None = None,
) -> dict:
    """Evaluate MODEL with lm-evaluation-harness on local llm4all tasks or lm-eval's own tasks.

    Args:
        model: a registered name, an HF directory or a .gguf file.
        tasks: llm4all task names or YAML files (run offline), or lm-eval task names (their data
            must already be in the Hugging Face datasets cache). Default: the shipped local tasks.
        dtype: float32 or bfloat16.
        batch_size: (context, continuation) pairs per forward pass.
        limit: evaluate only the first N documents of each task.
        device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
        out: directory for harness.json (nothing written if not given).
    """
    from llm4all.evaluate.tasks import load_task, task_names
    from llm4all.runs import write_json, write_manifest

    _lm_base()
    import lm_eval

    specs = []
    for name in tasks or task_names():
        local = name in task_names() or name.endswith((".yaml", ".yml"))
        specs.append(lm_eval_config(load_task(name)) if local else name)
    from lm_eval.tasks import TaskManager

    lm = Llm4allLM(model, dtype=dtype, batch_size=batch_size, device=device)
    # indexing lm-eval's ~200 built-in task folders takes tens of seconds: only when one is asked for
    manager = TaskManager(include_defaults=any(isinstance(s, str) for s in specs))
    results = lm_eval.simple_evaluate(model=lm, tasks=specs, limit=limit, log_samples=False,
                                      bootstrap_iters=0, task_manager=manager)
    from lm_eval.utils import make_table

    print(make_table(results))
    summary = {"model": str(model), "dtype": dtype, "limit": limit, "results": results["results"],
               "lm_eval_version": lm_eval.__version__}
    if out is not None:
        write_json(Path(out) / "harness.json", summary)
        write_manifest(out, "eval harness", inputs={"model": str(model)}, metrics=summary)
    return summary
