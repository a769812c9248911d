"""Tiny in-process models and texts for tests (no network). Importable as `tinymodels`
(pytest puts tests/ on sys.path: see pythonpath in pyproject.toml)."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = """the of and to in a is that for it as was with be by on not he this are or his from
at which but have an they you were her she there one all we can would their""".split()


def tiny_texts(n: int = 40, seed: int = 0, words: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(words // 2, words))) + "."
            for _ in range(n)]


def build_tiny_model(path: Path, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A 2-layer Llama with a word-level tokenizer over WORDS, saved as an HF directory."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, ".": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def tiny_teacher_and_shards(root: Path, **model_kwargs) -> Path:
    """A tiny teacher at ROOT/teacher and its tokenized shards at ROOT/shards (120 documents)."""
    import json

    from llm4all.data.tokenize import main as tokenize

    teacher = build_tiny_model(root / "teacher", **model_kwargs)
    docs = root / "docs.jsonl"
    with docs.open("w") as f:
        for i, text in enumerate(tiny_texts(120, words=80)):
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    tokenize([docs], out=root / "shards", tokenizer=str(teacher), workers=1, val_fraction=0.1)
    return teacher
