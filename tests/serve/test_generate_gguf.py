"""GGUF files through llama.cpp in process: our loop on llama.cpp's logits against llama.cpp's
own greedy completion, against transformers on the same model, the CLI and a chat."""

from __future__ import annotations

import io
import itertools

import llama_cpp  # installed by `make install` (scripts/llama-cpp.sh): these tests never skip
import pytest
import torch

from llm4all.cli import main as cli
from llm4all.serve.backends import open_lm
from llm4all.serve.chat import ChatSession, run
from llm4all.serve.generate import generate
from llm4all.serve.sampling import Sampling

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Write a haiku about autumn.", "Who wrote Hamlet?"]


@pytest.fixture(scope="module")
def gguf():
    from llm4all.models.load import smollm2_135m

    return smollm2_135m()


@pytest.fixture(scope="module")
def lm(gguf):
    return open_lm(str(gguf))


def test_a_gguf_file_runs_on_llama_cpp(lm, gguf):
    assert lm.engine == "llama.cpp" and lm.context_length == 8192
    assert open_lm("smollm2-135m", engine="llama.cpp").engine == "llama.cpp"  # the name's GGUF


def reference_llama(gguf, **kwargs):
    """A second llama.cpp instance, used only through llama-cpp-python's own API."""
    from llm4all.threads import free_cores  # threads spinning on a busy core crawl

    return llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=free_cores(), verbose=False, **kwargs)


@pytest.mark.parametrize("question", QUESTIONS[:2])
def test_greedy_equals_llama_cpps_own_greedy(lm, gguf, question):
    ids = lm.chat_ids([{"role": "user", "content": question}])
    ours = generate(lm, ids, max_new_tokens=32)
    reference = reference_llama(gguf)
    completion = reference.create_completion(ids, max_tokens=32, temperature=0.0)["choices"][0]
    assert ours.text == completion["text"]
    assert {"eos": "stop", "length": "length"}[ours.stop_reason] == completion["finish_reason"]
    tokens = list(itertools.islice(reference.generate(ids, temp=0.0, reset=True), len(ours.token_ids)))
    assert tokens == ours.token_ids
    reference.close()


def test_llama_cpp_and_transformers_compute_the_same_model(lm, gguf):
    """Same GGUF, two runtimes: llama.cpp multiplies Q4_1 weights by 8-bit-quantised activations,
    transformers de-quantised fp32 weights by fp32 activations, so near-ties can flip (free-running
    greedy texts then part; docs/generate.md measures after how many tokens). Teacher-forced on
    llama.cpp's greedy text, the next-token distributions must still agree closely."""
    torch_lm = open_lm("smollm2-135m", engine="torch")
    reference = reference_llama(gguf, logits_all=True)  # every position's logits in one pass
    top1, kl = [], []
    for question in QUESTIONS[:2]:
        ids = lm.chat_ids([{"role": "user", "content": question}])
        assert ids == torch_lm.chat_ids([{"role": "user", "content": question}])
        seq = ids + generate(lm, ids, max_new_tokens=32).token_ids
        reference.reset()
        reference.eval(seq)
        a = torch.log_softmax(torch.from_numpy(reference.scores[len(ids) - 1 : len(seq) - 1]), -1)
        with torch.no_grad():
            b = torch.log_softmax(torch_lm.model(torch.tensor([seq])).logits[0, len(ids) - 1 : -1], -1)
        kl += (a.exp() * (a - b)).sum(-1).tolist()  # (positions,) KL(llama.cpp || transformers)
        top1 += (a.argmax(-1) == b.argmax(-1)).tolist()
        chosen = b.gather(1, a.argmax(-1, keepdim=True))  # transformers' logprob of llama.cpp's token
        assert ((b > chosen).sum(-1) <= 2).all()  # llama.cpp's token is in transformers' top 3
    reference.close()
    assert sum(top1) / len(top1) >= 0.9  # measured 0.97 over 359 positions
    assert sum(kl) / len(kl) < 0.02  # nats; measured 0.004


def test_the_gguf_chat_template_renders_as_transformers_does(lm):
    torch_lm = open_lm("smollm2-135m", engine="torch")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! 🌊"}, {"role": "user", "content": "Bye"}]
    assert lm.chat_ids(messages) == torch_lm.chat_ids(messages)


def test_seeded_sampling_and_stop_strings_on_llama_cpp(lm):
    sampling = Sampling(temperature=0.9, top_p=0.95, seed=5)
    runs = [generate(lm, "Once upon a time", max_new_tokens=24, sampling=sampling).token_ids
            for _ in range(2)]
    assert runs[0] == runs[1]
    other = generate(lm, "Once upon a time", max_new_tokens=24, sampling=Sampling(0.9, top_p=0.95, seed=6))
    assert other.token_ids != runs[0]
    full = generate(lm, "Once upon a time", max_new_tokens=24).text
    cut = generate(lm, "Once upon a time", max_new_tokens=24, stop=[full[5:9]])
    assert cut.text == full[: full.index(full[5:9])] and cut.stop_reason == "stop"


def test_cli_generate_streams_a_gguf(gguf, lm, capsys):
    expected = generate(lm, "Who wrote Hamlet?", chat=True, max_new_tokens=16).text
    assert cli(["generate", str(gguf), "Who wrote Hamlet?", "--chat", "--max-new-tokens", "16"]) == 0
    out, err = capsys.readouterr()
    assert out == expected + "\n" and "[llama.cpp:" in err
    assert cli(["generate", str(gguf), "x", "--device", "cuda"]) == 2
    assert cli(["generate", str(gguf), "x", "--dtype", "float16"]) == 2
    assert "--dtype" in capsys.readouterr().err


def test_chat_on_llama_cpp_reuses_its_kv_cache(lm, gguf):
    """The next turn's logits from the reused cache match a fresh prefill of the whole history.
    Not bit for bit: llama.cpp computes one token (the reply, fed token by token) with other
    kernels than a batch of tokens (measured on one prompt: max |logit difference| 0.28 when the
    last of 50 tokens is fed alone, 0 when fed in batches; 0.7 between llama.cpp and transformers)."""
    from llm4all.serve.generate import common_prefix

    session = ChatSession(lm, max_new_tokens=24, sampling=Sampling())
    run(session, io.StringIO("What is the capital of France?\nAnd of Italy?\n"), io.StringIO())
    assert session.turns[1].reused_tokens >= session.turns[0].prompt_tokens
    ids = lm.chat_ids([*session.messages, {"role": "user", "content": "And of Spain?"}])
    reused = common_prefix(lm.cached, ids)
    assert reused == len(lm.cached)  # the whole previous exchange is still valid
    lm.crop(reused)
    a = torch.log_softmax(lm.forward(ids[reused:]), -1)
    b = torch.log_softmax(open_lm(str(gguf)).forward(ids), -1)
    assert float((a.exp() * (a - b)).sum()) < 0.02  # nats; measured 0.004
    assert int((b > b[a.argmax()]).sum()) <= 2
