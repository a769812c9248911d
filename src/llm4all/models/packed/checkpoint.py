"""The packed checkpoint: save a model with compressed modules, load it back into one that runs.

A packed checkpoint is a Hugging Face directory (``config.json``, tokenizer files) whose
``model.safetensors`` holds packed tensors (layouts in ``formats.py``), plus
``llm4all_quant.json`` naming every compressed module and its kind (``int``, ``int8``,
``ternary``, ``lowrank``, ``sparse``, ``embedding``, resized ``dense``) so that ``load_packed``
rebuilds exactly those modules on the meta device and assigns the file's tensors to them:
packed weights stay packed in memory. ``llm4all.models.load.load`` calls ``load_packed`` for
any directory holding ``llm4all_quant.json``; the compress stage calls ``save_packed``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from llm4all.errors import UserError
from llm4all.models.packed.embedding import PackedEmbedding, TiedHead, embedding_spec
from llm4all.models.packed.formats import FORMAT, dense_from_sparse, sparse_tensors
from llm4all.models.packed.int8 import Int8Linear, TernaryLinear
from llm4all.models.packed.kernels import aligned
from llm4all.models.packed.lowrank import LowRankLinear
from llm4all.models.packed.qlinear import QuantLinear
from llm4all.models.packed.sparse import keep_sparsity
from llm4all.models.quiet import quiet_transformers
from llm4all.runs import atomic_dir, write_json

QUANT_FILE = "llm4all_quant.json"
QUANTIZED = ("int", "int8", "ternary")  # module kinds whose weights stay packed in memory


def is_packed(path: str | Path) -> bool:
    """Whether ``path`` is a packed checkpoint directory (it has llm4all_quant.json)."""
    return (Path(path) / QUANT_FILE).is_file()


def module_specs(model: nn.Module) -> dict[str, dict]:
    """llm4all_quant.json entries: every compressed module, plus Linears whose shape changed."""
    specs = {}
    for name, m in model.named_modules():
        if hasattr(m, "spec"):
            specs[name] = m.spec()
        elif isinstance(m, nn.Linear) and name != "lm_head":
            kind = getattr(m, "llm4all_kind", "dense")
            if kind == "sparse" or getattr(m, "llm4all_resized", False):
                specs[name] = {"kind": kind, "in_features": m.in_features,
                               "out_features": m.out_features, "bias": m.bias is not None}
    return specs


def from_spec(spec: dict, dtype: torch.dtype = torch.float32) -> nn.Module:
    """An empty runtime module for a llm4all_quant.json entry (buffers loaded afterwards)."""
    if spec["kind"] == "embedding":
        return PackedEmbedding(spec["num_embeddings"], spec["embedding_dim"], spec["dtype"], dtype,
                               spec["role"])
    kind, i, o, b = spec["kind"], spec["in_features"], spec["out_features"], spec.get("bias", False)
    if kind == "int":
        return QuantLinear(i, o, spec["bits"], spec["group_size"], spec["symmetric"], b)
    if kind == "int8":
        return Int8Linear(i, o, spec["outliers"], b)
    if kind == "ternary":
        return TernaryLinear(i, o, b)
    if kind == "lowrank":
        return LowRankLinear(i, o, spec["rank"], b)
    if kind in ("dense", "sparse"):
        linear = nn.Linear(i, o, bias=b)
        linear.llm4all_kind, linear.llm4all_resized = kind, kind == "dense"  # re-saved in the same form
        return linear
    raise ValueError(f"unknown module kind {kind!r} in llm4all_quant.json")


def save_packed(model: nn.Module, tokenizer, out: Path, info: dict) -> dict:
    """Write ``model`` (with compressed modules) as a packed checkpoint directory; returns its specs."""
    from safetensors.torch import save_file

    specs = module_specs(model)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    tensors: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if tied and key == "lm_head.weight":
            continue
        if specs.get(owner, {}).get("kind") == "sparse" and leaf == "weight":
            for k, v in sparse_tensors(t.detach()).items():
                tensors[f"{owner}.{k}"] = v.contiguous()
            continue
        if t.is_floating_point() and not (owner in specs and leaf == "scales"):
            t = t.to(torch.float16)  # embeddings, norms, dense weights: fp16 on disk
        tensors[key] = t.detach().contiguous()
    with atomic_dir(out) as tmp:
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        write_json(tmp / QUANT_FILE, {"format": FORMAT, "dense_dtype": "float16", **info,
                                      "modules": specs})
    return specs


def read_quant_file(path: str | Path) -> dict:
    """The llm4all_quant.json of a packed checkpoint, checked for its format."""
    meta_file = Path(path) / QUANT_FILE
    if not meta_file.is_file():
        raise UserError(f"{path}: not a packed checkpoint (no {QUANT_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as e:
        raise UserError(f"{meta_file}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{meta_file}: format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                        f"expected {FORMAT!r}")
    return meta


def load_packed(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a packed checkpoint into a runnable model: ``(model, tokenizer)``.

    Packed weights stay packed. In a quantised checkpoint the embedding (and output head) stays
    float16 or int8 too (``embedding.PackedEmbedding``) and returns ``dtype`` activations;
    other dense tensors (norms; every weight of a pruned or factorised model) become ``dtype``.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    meta = read_quant_file(path)
    with quiet_transformers():
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    specs = dict(meta["modules"])
    if any(spec["kind"] in QUANTIZED for spec in specs.values()):
        specs.update(_packed_embedding_specs(model, specs, config))
    with torch.device("meta"):  # empty modules: their tensors come from the file, no zeros first
        for name, spec in specs.items():
            model.set_submodule(name, from_spec(spec, dtype))
    state = {k: aligned(t) for k, t in load_file(str(path / "model.safetensors")).items()}
    for name, spec in specs.items():
        if spec["kind"] == "sparse":
            shape = (spec["out_features"], spec["in_features"])
            mask, values = state.pop(f"{name}.mask"), state.pop(f"{name}.values")
            state[f"{name}.weight"] = dense_from_sparse(mask, values, shape, dtype)
    for key, t in state.items():
        owner, _, leaf = key.rpartition(".")
        kind = specs.get(owner, {}).get("kind", "dense")
        if t.is_floating_point() and kind in ("dense", "sparse", "lowrank"):
            state[key] = t.to(dtype)
        elif t.is_floating_point() and leaf == "bias":
            state[key] = t.float()
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    del state
    if config.tie_word_embeddings:
        embedding = model.get_input_embeddings()
        if isinstance(embedding, PackedEmbedding):
            model.lm_head = TiedHead(embedding)
        else:
            model.lm_head.weight = embedding.weight
        missing = [k for k in missing if not k.startswith("lm_head.")]
    if missing or unexpected:
        raise UserError(f"{path}: model.safetensors does not match {QUANT_FILE}: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, spec in specs.items():
        if spec["kind"] == "sparse":  # training (recovery) keeps pruned weights at zero
            keep_sparsity(model.get_submodule(name))
    for name, attrs in meta.get("attributes", {}).items():  # e.g. per-layer num_key_value_groups
        for attr, value in attrs.items():
            setattr(model.get_submodule(name), attr, value)
    for name, m in list(model.named_modules()):  # non-persistent buffers (rotary inv_freq)
        if any(b.is_meta for b in m.buffers(recurse=False)):
            model.set_submodule(name, type(m)(config=config))
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise UserError(f"{path}: some tensors were not in model.safetensors")
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def _packed_embedding_specs(model: nn.Module, specs: dict, config) -> dict:
    """A quantised checkpoint keeps its float16 embedding (and untied head) as stored, not upcast."""
    names = {id(m): n for n, m in model.named_modules()}
    out = {}
    roles = [(model.get_input_embeddings(), "embedding")]
    if not config.tie_word_embeddings and model.get_output_embeddings() is not None:
        roles.append((model.get_output_embeddings(), "head"))
    for module, role in roles:
        name = names[id(module)]
        if name not in specs:
            rows, cols = module.weight.shape
            out[name] = embedding_spec(rows, cols, "float16", role)
    return out
