"""Model-based signals: token entropy, perplexity and Ask-LLM on tiny in-process models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from llm4all.curate.signals import compute_signals
from llm4all.curate.signals.model import (
    ASK_LLM_PROMPT,
    answer_tokens,
    ask_llm,
    ask_llm_pieces,
    cached_model,
    perplexity,
    token_entropy,
)
from llm4all.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the answer words and the prompt's own words, so a word-level tokenizer can say yes and no
ASK_WORDS = ("yes Yes no No # does previous paragraph contain informative signal "
             "OPTIONS : - ?").split()
TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def build_yes_no_model(path: Path, chat_template: str | None = None) -> Path:
    """A 2-layer Llama whose word-level tokenizer knows yes/Yes/no/No (optionally a template)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = "the of and to in a is that for it as was with be by on not he this are".split()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, ".": 3}
    for w in words + ASK_WORDS + ["user", "assistant"]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")
    if chat_template:
        fast.chat_template = chat_template
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(1)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def yes_no_model(tmp_path_factory) -> Path:
    return build_yes_no_model(tmp_path_factory.mktemp("yesno") / "model")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    return build_yes_no_model(tmp_path_factory.mktemp("chat") / "model", TEMPLATE)


TEXTS = ["the of and to in a is that for it as was with be by on not he this are the of",
         "the of the of the of", "", "the", "and a is that for . it was with", "he is on this"]


def test_token_entropy_hand_values(tiny_model):
    got = token_entropy(["the the of of", "the of and to", "", "the the the"],
                        tokenizer=str(tiny_model))
    # p = (1/2, 1/2) -> 1 bit; four equiprobable ids -> 2 bits; nothing or one id -> 0
    np.testing.assert_allclose(got["token_entropy"], [1.0, 2.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_array_equal(got["token_count"], [4, 4, 0, 3])


def test_perplexity_equals_direct_per_document_loss(tiny_model):
    """Batched, padded, chunked NLL == model(ids, labels=ids).loss document by document."""
    got = perplexity(TEXTS, model=str(tiny_model), dtype="float32", max_tokens=12, batch_size=3)
    net, tok = cached_model(str(tiny_model), "float32")
    for i, text in enumerate(TEXTS):
        ids = tok(text, add_special_tokens=False)["input_ids"][:12]
        assert got["ppl_tokens"][i] == max(0, len(ids) - 1)
        if len(ids) < 2:  # nothing to predict: the defined value
            assert (got["ppl"][i], got["nll"][i]) == (1.0, 0.0)
            continue
        with torch.no_grad():
            x = torch.tensor([ids])
            loss = net(x, labels=x).loss.item()
        assert got["nll"][i] == pytest.approx(loss, rel=1e-5)
        assert got["ppl"][i] == pytest.approx(math.exp(loss), rel=1e-5)


def test_perplexity_independent_of_batching(tiny_model):
    one = perplexity(TEXTS, model=str(tiny_model), dtype="float32", batch_size=1)
    four = perplexity(TEXTS, model=str(tiny_model), dtype="float32", batch_size=4)
    np.testing.assert_allclose(one["nll"], four["nll"], rtol=1e-5)
    bf16 = perplexity(TEXTS, model=str(tiny_model), dtype="bfloat16", batch_size=4)
    np.testing.assert_allclose(bf16["nll"], four["nll"], rtol=0.05)


def test_signals_contract_and_bad_options(tiny_model):
    cols = compute_signals(TEXTS, [{"name": "perplexity", "model": str(tiny_model)},
                                   {"name": "token_entropy", "tokenizer": str(tiny_model)}])
    assert list(cols) == ["ppl", "nll", "ppl_tokens", "token_entropy", "token_count"]
    with pytest.raises(UserError, match="unknown option 'max_token'"):
        compute_signals(TEXTS, [{"name": "perplexity", "max_token": 3}])
    with pytest.raises(UserError, match="max_tokens must be >= 2"):
        perplexity(TEXTS, model=str(tiny_model), max_tokens=1)
    with pytest.raises(UserError, match="unknown model"):
        perplexity(TEXTS, model="no-such-model")


def reference_ask_llm(model_dir: Path, text: str, max_tokens: int) -> float:
    """One document, no padding, full-vocabulary softmax, renormalised over yes/no."""
    net, tok = cached_model(str(model_dir), "float32")
    prompt = ASK_LLM_PROMPT.format(text=" ".join(text.split()[:max_tokens]))
    if tok.chat_template:
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    else:
        prompt += "\n"
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        p = net(ids).logits[0, -1].softmax(-1)
    yes = p[tok.convert_tokens_to_ids(["yes", "Yes"])].sum()
    no = p[tok.convert_tokens_to_ids(["no", "No"])].sum()
    return (yes / (yes + no)).item()


@pytest.mark.parametrize("fixture", ["yes_no_model", "chat_model"])
def test_ask_llm_equals_unbatched_reference(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    texts = [t for t in TEXTS if t.split()]  # the word-level reference truncates by words
    got = ask_llm(texts, model=str(model_dir), dtype="float32", max_tokens=8, batch_size=3)
    want = [reference_ask_llm(model_dir, t, 8) for t in texts]
    np.testing.assert_allclose(got["ask_llm"], want, rtol=1e-5)
    assert ((got["ask_llm"] > 0) & (got["ask_llm"] < 1)).all()


def test_ask_llm_prompt_pieces(yes_no_model, chat_model):
    _, plain = cached_model(str(yes_no_model), "float32")
    head, tail, after_space = ask_llm_pieces(plain)
    # the word-level tokenizer splits "###" and drops whitespace; the text ends with "- no\n"
    assert plain.convert_ids_to_tokens(head) == ["#", "#", "#"] and after_space
    assert plain.convert_ids_to_tokens(tail[-2:]) == ["-", "no"]
    _, chat = cached_model(str(chat_model), "float32")
    head, tail, _ = ask_llm_pieces(chat)
    assert chat.convert_ids_to_tokens(head[:2]) == ["<s>", "user"]
    assert chat.convert_ids_to_tokens(tail[-2:]) == ["<s>", "assistant"]
    assert answer_tokens(chat, after_space=True) == (
        sorted(chat.convert_tokens_to_ids(["yes", "Yes"])),
        sorted(chat.convert_tokens_to_ids(["no", "No"])))


def test_ask_llm_truncates_and_rejects_bad_input(yes_no_model, tiny_model):
    long = "the of and to in a is that for it as was"
    a = ask_llm([long], model=str(yes_no_model), dtype="float32", max_tokens=4)
    b = ask_llm(["the of and to"], model=str(yes_no_model), dtype="float32", max_tokens=4)
    assert a["ask_llm"][0] == pytest.approx(b["ask_llm"][0], rel=1e-6)
    with pytest.raises(UserError, match="cannot tell 'yes' from 'no'"):
        ask_llm(["the"], model=str(tiny_model))  # its vocabulary has neither word
    with pytest.raises(UserError, match="prompt alone fills"):
        _fill_positions(yes_no_model)


def _fill_positions(model_dir: Path) -> None:
    net, _ = cached_model(str(model_dir), "bfloat16")
    limit = net.config.max_position_embeddings
    net.config.max_position_embeddings = 10  # shorter than the prompt
    try:
        ask_llm(["the"], model=str(model_dir))
    finally:
        net.config.max_position_embeddings = limit


KJV = ("In the beginning God created the heaven and the earth. And the earth was without form, "
       "and void; and darkness was upon the face of the deep. And the Spirit of God moved upon "
       "the face of the waters. And God said, Let there be light: and there was light.")
CLEAN = ("The mitochondrion is an organelle found in most eukaryotic cells. It produces "
         "adenosine triphosphate (ATP) through oxidative phosphorylation and so supplies most "
         "of the chemical energy the cell needs. Mitochondria carry their own DNA, inherited "
         "from the mother, and are thought to descend from engulfed bacteria.")
JUNK = "asdf qwer zxcv $$$$ !!!! asdf qwer 1234 $$$$ ;;;; zxcv qwer $$$$ asdf #### qwer"


@pytest.mark.slow
def test_real_teacher_perplexity_orders_text_and_word_salad():
    words = KJV.split()
    salad = " ".join(np.random.default_rng(0).permutation(words))
    got = perplexity([KJV, salad, CLEAN, JUNK, ""], batch_size=4)
    assert got["ppl"][0] < got["ppl"][1] / 10  # measured: 6.5 vs 631 in bf16
    assert got["ppl"][2] < got["ppl"][3]
    assert got["ppl"][4] == 1.0


@pytest.mark.slow
def test_real_teacher_ask_llm_is_well_defined_but_weak():
    """SmolLM2-135M reads the chat-formatted prompt and answers with bare yes/Yes/no/No.

    It does NOT separate informative text from junk (measured: CLEAN 0.43, JUNK 0.58 in fp32;
    see docs/curate.md), so only the mechanics are asserted here.
    """
    _, tok = cached_model("smollm2-135m", "float32")
    head, tail, after_space = ask_llm_pieces(tok)
    assert tok.decode(tail).endswith("<|im_start|>assistant\n") and after_space
    assert answer_tokens(tok, after_space) == ([10407, 10539], [4607, 5230])
    texts = [CLEAN, JUNK, KJV]
    one = ask_llm(texts, dtype="float32", batch_size=1)["ask_llm"]
    three = ask_llm(texts, dtype="float32", batch_size=3)["ask_llm"]
    np.testing.assert_allclose(one, three, atol=1e-4)
    assert ((one > 0.05) & (one < 0.95)).all()


def test_model_signals_on_degenerate_text_are_finite(tiny_model, chat_model):
    texts = ["", "\x00\ud800", "x" * 5000, "!!! ... ??"]
    for values in (token_entropy(texts, tokenizer=str(tiny_model)),
                   perplexity(texts, model=str(tiny_model), dtype="float32", max_tokens=64),
                   ask_llm(texts, model=str(chat_model), dtype="float32", max_tokens=64)):
        for col, v in values.items():
            assert np.isfinite(v).all(), col


@pytest.mark.slow
def test_model_signals_in_ray_actors_equal_the_driver_ones(yes_no_model, docs_jsonl, tmp_path):
    """issue 17 item 2: perplexity and Ask-LLM run in Ray actors (one model load each) and give the
    values the local engine computes in the driver, shard for shard."""
    import pyarrow.parquet as pq

    from llm4all.curate.pipeline import main as curate

    signals = [{"name": name, "model": str(yes_no_model), "dtype": "float32", "max_tokens": 16}
               for name in ("perplexity", "ask_llm")]
    kwargs = {"signals": signals, "steps": [], "shard_docs": 8, "lang_id": "meta"}
    local = curate([docs_jsonl], out=tmp_path / "local", workers=1, **kwargs)
    on_ray = curate([docs_jsonl], out=tmp_path / "ray", engine="ray", workers=2, **kwargs)
    assert on_ray["engine_stats"]["computed"] == local["engine_stats"]["computed"] == 5  # 40 docs / 8
    a, b = (pq.read_table(tmp_path / x / "signals.parquet").to_pydict() for x in ("local", "ray"))
    assert a["id"] == b["id"] and set(a) == {"id", "ppl", "nll", "ppl_tokens", "ask_llm"}
    for column in ("ppl", "nll", "ppl_tokens", "ask_llm"):
        np.testing.assert_allclose(b[column], a[column], rtol=1e-6)
