"""A tiny Llama with a byte-level BPE tokenizer and a chat template: the smallest model that
llm4all exports to GGUF and llama.cpp runs (tests of export, K-quants and serve)."""

from __future__ import annotations

import json
from pathlib import Path

from tinymodels import tiny_texts

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def build_bpe_llama(path: Path, *, hidden: int = 64, intermediate: int = 128, layers: int = 2,
                    tied: bool = True, seed: int = 0) -> Path:
    """A GQA Llama (4 heads, 2 KV heads) with a 320-token byte-level BPE trained on tiny texts."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tiny_texts(200), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<|endoftext|>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=tied)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the init's: peaked next-token distributions
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name == "model.embed_tokens.weight":
                p.normal_(0.0, 1.0)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def bpe_shards(model: Path, root: Path, docs: int = 200, words: int = 80) -> Path:
    """Token shards of ``docs`` tiny texts, tokenized by ``model``'s tokenizer, at ROOT/shards."""
    from llm4all.data.tokenize import main as tokenize

    root.mkdir(parents=True, exist_ok=True)
    source = root / "docs.jsonl"
    with source.open("w") as f:
        for i, text in enumerate(tiny_texts(docs, seed=1, words=words)):
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    tokenize([source], out=root / "shards", tokenizer=str(model), workers=1, val_fraction=0.1)
    return root / "shards"
