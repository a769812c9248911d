"""Fixtures for generate/chat: a tiny model whose greedy output varies, a byte-level BPE
tokenizer that splits multi-byte characters, and a scripted backend that emits given tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinymodels import build_tiny_model, tiny_texts


@pytest.fixture(scope="session")
def lively_model(tmp_path_factory) -> Path:
    """The tiny Llama with weights ~ N(0, 0.3): its greedy text does not repeat one word."""
    from transformers import AutoModelForCausalLM

    path = build_tiny_model(tmp_path_factory.mktemp("lively") / "model")
    model = AutoModelForCausalLM.from_pretrained(path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def byte_bpe():
    """A byte-level BPE tokenizer (GPT-2 style, 300 tokens) trained on English words only: an
    accented letter, a CJK character or an emoji is spelled in 2-4 byte tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tiny_texts(200), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


class ScriptedLM:
    """A backend (the protocol of serve/backends.py) whose model emits ``script`` in order,
    then EOS: each forward returns logits with the next scripted token on top."""

    engine = "scripted"

    def __init__(self, tokenizer, script: list[int]):
        from llm4all.serve.detokenize import TokenDetokenizer

        self.tokenizer, self.script, self.detok = tokenizer, script, TokenDetokenizer
        self.eos_ids = {tokenizer.eos_token_id}
        self.context_length, self.device, self.cached = None, torch.device("cpu"), []
        self.prompt_len = 0

    def encode(self, text):
        ids = self.tokenizer(text)["input_ids"]
        self.prompt_len = len(ids)
        return ids

    def detokenizer(self, context):
        return self.detok(self.tokenizer, context)

    def forward(self, ids):
        self.cached += ids
        step = len(self.cached) - self.prompt_len
        token = self.script[step] if step < len(self.script) else self.tokenizer.eos_token_id
        logits = torch.zeros(len(self.tokenizer))
        logits[token] = 10.0
        return logits

    def crop(self, n):
        del self.cached[n:]


@pytest.fixture()
def scripted_lm():
    """The ScriptedLM class (tests call it with a tokenizer and the token ids to emit)."""
    return ScriptedLM


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The CLI sets torch's thread count for its process; give the next test the original."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
