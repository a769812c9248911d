"""GGUF tokenizer metadata (``tokenizer.ggml.*``) for a GPT-2-style byte-level BPE tokenizer.

llama.cpp rebuilds the tokenizer from metadata alone (``src/llama-vocab.cpp``): the token
strings in id order, one type per token (1 normal, 3 control, 4 user-defined, 5 unused), the
BPE merges in priority order, the special token ids, and a pre-tokenizer name that selects
the regular expressions splitting text before BPE. The names follow llama.cpp's
``convert_hf_to_gguf.py``: ``gpt-2`` (GPT-2's regex, ByteLevel alone), ``smollm`` (digits
split one by one, then GPT-2's regex: SmolLM/SmolLM2), ``llama-bpe`` (Llama 3's regex).

A model that llm4all converted from a GGUF (its ``llm4all.json`` names the source file)
inherits that file's pre-tokenizer and ``general.*`` description: transformers' GGUF loader
drops e.g. SmolLM2's digit split when it rebuilds the tokenizer, and the original file is the
better record of how the model was trained.
"""

from __future__ import annotations

import json
from pathlib import Path

from llm4all.errors import UserError

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # gguf.TokenType values
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
INHERITED = ("general.name", "general.organization", "general.finetune", "general.basename",
             "general.size_label", "general.license", "general.languages", "tokenizer.ggml.pre")


def tokenizer_json(tokenizer) -> dict:
    """The ``tokenizer.json`` document of a fast tokenizer; UserError for other kinds."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"GGUF export needs a fast (tokenizers) tokenizer; got {type(tokenizer).__name__}")
    return json.loads(backend.to_str())


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a byte-level pre-tokenizer, from its tokenizer.json description."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre or {}]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex"):
        return "smollm"
    if (kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT
            and not steps[1].get("use_regex", True)):
        return "llama-bpe"
    raise UserError(f"GGUF export: pre-tokenizer {'+'.join(map(str, kinds))} has no llama.cpp "
                    "equivalent known to llm4all; supported: ByteLevel (gpt-2), "
                    "Digits+ByteLevel (smollm), Llama-3 Split+ByteLevel (llama-bpe)")


def byte_level_bpe(doc: dict) -> tuple[list[str], dict]:
    """(merges as "a b" strings, pre-tokenizer description) of a byte-level BPE tokenizer.json."""
    model = doc.get("model", {})
    decoder = doc.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise UserError(f"GGUF export supports GPT-2-style byte-level BPE tokenizers "
                        f"(tokenizer.ggml.model gpt2); this one is {model.get('type')} with a "
                        f"{decoder.get('type')} decoder")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return merges, doc.get("pre_tokenizer") or {}


def token_table(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and types in id order, padded to ``vocab_size`` as llama.cpp pads."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise UserError(f"tokenizer has token id {max(by_id)} but the model's vocab_size is {vocab_size}")
    added = getattr(tokenizer, "added_tokens_decoder", {})
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL if i not in added else CONTROL if added[i].special else USER_DEFINED)
    return tokens, types


def adds_special(tokenizer) -> tuple[bool, bool]:
    """Whether encoding adds BOS in front / EOS at the end (read off the post-processor)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    bos = full[:1] == [tokenizer.bos_token_id] and full[1:len(plain) + 1] == plain
    eos = len(full) > len(plain) and full[-1] == tokenizer.eos_token_id
    return bos, eos


def inherited_fields(model_dir: Path | None) -> dict:
    """``general.*`` and pre-tokenizer values of the GGUF this model was converted from, if any."""
    if model_dir is None or not (model_dir / "llm4all.json").exists():
        return {}
    source = Path(json.loads((model_dir / "llm4all.json").read_text()).get("source", ""))
    if source.suffix != ".gguf" or not source.is_file():
        return {}
    from gguf import GGUFReader

    fields = GGUFReader(source).fields
    return {k: fields[k].contents() for k in INHERITED if k in fields}


def add_vocab(writer, tokenizer, vocab_size: int, model_dir: Path | None = None) -> dict:
    """Write the ``tokenizer.ggml.*`` keys (and inherited ``general.*``); returns what was inherited."""
    merges, pre = byte_level_bpe(tokenizer_json(tokenizer))
    inherited = inherited_fields(model_dir)
    tokens, types = token_table(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(inherited.get("tokenizer.ggml.pre") or pre_tokenizer_name(pre))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, value in inherited.items():
        if key == "general.languages":
            writer.add_languages(value)
        elif key.startswith("general."):
            writer.add_string(key, value)
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                          (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id),
                          (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(token_id)
    bos, eos = adds_special(tokenizer)
    writer.add_add_bos_token(bos)
    if eos:  # llama.cpp defaults to False; the original SmolLM2 GGUF omits the key
        writer.add_add_eos_token(eos)
    steps = pre.get("pretokenizers", [pre])
    writer.add_add_space_prefix(any(s.get("add_prefix_space", False) for s in steps))
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
    return inherited
