"""A real llama-server started the way `llm4all serve` starts it, driven by the `openai` client."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llm4all.serve.engines import EngineOptions, LlamaServer
from llm4all.serve.prepare import gguf_for
from llm4all.serve.process import free_port, running, url_of
from tinybpe import build_bpe_llama

PROMPTS = ["the of and", "she was with", "they can not", "there is one", "all we would"]


class Server:
    def __init__(self, gguf: Path, url: str, alias: str):
        from openai import OpenAI

        self.gguf, self.url, self.alias = gguf, url, alias
        self.client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)

    def complete(self, prompt: str, max_tokens: int = 12) -> str:
        out = self.client.completions.create(model=self.alias, prompt=prompt, max_tokens=max_tokens,
                                             temperature=0)
        return out.choices[0].text


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    gguf = gguf_for(build_bpe_llama(root / "tiny-bpe", hidden=128, intermediate=256), "f32")
    options = EngineOptions(port=free_port(), parallel=4, context=256, threads=2, alias="tiny-bpe")
    url = url_of(options.host, options.port)
    with running(LlamaServer.command(gguf, options), url, root / "server.log", timeout=120):
        yield Server(gguf, url, options.alias)


def greedy_llama_cpp_python(gguf: Path, prompt: str, max_tokens: int) -> str:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=2, verbose=False)
    try:
        return llm(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1)["choices"][0]["text"]
    finally:
        llm.close()


def test_a_q8_0_kv_cache_server_answers_as_llama_cpp_python_with_that_cache(tmp_path):
    """`serve --kv-dtype int8`: llama-server with q8_0 keys and values (and flash attention) gives
    the greedy text llama-cpp-python gives with the same cache types."""
    from llama_cpp import Llama

    from llm4all.models.llamacpp import llama_kv_options

    gguf = gguf_for(build_bpe_llama(tmp_path / "tiny-bpe", hidden=128, intermediate=256), "f32")
    options = EngineOptions(port=free_port(), parallel=1, context=256, threads=2, alias="kv8",
                            kv_dtype="int8")
    url = url_of(options.host, options.port)
    with running(LlamaServer.command(gguf, options), url, tmp_path / "server.log", timeout=120):
        served = Server(gguf, url, "kv8").complete(PROMPTS[0], max_tokens=16)
    llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=2, verbose=False, **llama_kv_options("int8"))
    try:
        direct = llm(PROMPTS[0], max_tokens=16, temperature=0.0, top_k=1)["choices"][0]["text"]
    finally:
        llm.close()
    assert served == direct and len(served) > 0


def test_models_lists_the_alias(server):
    assert [m.id for m in server.client.models.list().data] == ["tiny-bpe"]


def test_temperature_zero_completion_equals_llama_cpp_greedy(server):
    for prompt in PROMPTS[:2]:
        served = server.complete(prompt, max_tokens=12)
        assert served == greedy_llama_cpp_python(server.gguf, prompt, 12)
        assert len(served) > 0


def test_chat_streamed_equals_non_streamed_and_uses_the_chat_template(server):
    from transformers import AutoTokenizer

    messages = [{"role": "system", "content": "be short"}, {"role": "user", "content": "the of and"}]
    whole = server.client.chat.completions.create(model=server.alias, messages=messages, max_tokens=10,
                                                  temperature=0)
    text = whole.choices[0].message.content
    assert whole.choices[0].finish_reason in ("stop", "length") and whole.usage.completion_tokens <= 10
    chunks = server.client.chat.completions.create(model=server.alias, messages=messages, max_tokens=10,
                                                   temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    # the prompt is the GGUF's tokenizer.chat_template rendered: as many tokens as transformers renders
    tokenizer = AutoTokenizer.from_pretrained(server.gguf.parent, gguf_file=server.gguf.name)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<s>system: be short</s><s>user: the of and</s><s>assistant:")
    assert whole.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_sixteen_concurrent_clients_two_requests_each(server):
    expected = {p: server.complete(p) for p in PROMPTS}  # one at a time first

    def client(i: int) -> list[tuple[str, str]]:
        prompts = [PROMPTS[i % len(PROMPTS)], PROMPTS[(i + 1) % len(PROMPTS)]]
        return [(p, server.complete(p)) for p in prompts]

    with ThreadPoolExecutor(16) as pool:
        answers = [a for result in pool.map(client, range(16)) for a in result]
    assert len(answers) == 32
    # batched with other requests, a greedy answer is the one the request gets alone
    assert all(text == expected[prompt] for prompt, text in answers)


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_malformed_requests_get_400_and_the_server_keeps_serving(server):
    status, body = post(f"{server.url}/v1/chat/completions", b'{"model": "tiny-bpe", "messages": 5}')
    assert status == 400 and "error" in body
    status, body = post(f"{server.url}/v1/completions", b'{"model": "tiny-bpe", "max_tokens": 3}')
    assert status == 400 and "prompt" in body["error"]["message"]
    status, _ = post(f"{server.url}/v1/chat/completions", b"{not json")
    assert status in (400, 500)  # llama-server answers a body that is not JSON with 500
    status, body = post(f"{server.url}/v1/completions",
                        json.dumps({"prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0}).encode())
    assert status == 200 and body["choices"][0]["text"] == server.complete(PROMPTS[0], max_tokens=4)


def test_the_server_process_stops_with_the_context(tmp_path):
    gguf = gguf_for(build_bpe_llama(tmp_path / "m"), "f32")
    options = EngineOptions(port=free_port(), parallel=1, context=128, alias="m")
    url = url_of(options.host, options.port)
    with running(LlamaServer.command(gguf, options), url, tmp_path / "log") as process:
        assert process.poll() is None
    assert process.poll() is not None  # stopped on leaving the context
    time.sleep(0.2)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/health", timeout=2)


@pytest.mark.slow
def test_smollm2_served_by_name_answers_like_llama_cpp(tmp_path):
    from openai import OpenAI
    from transformers import AutoTokenizer

    from llm4all.models.load import load_tokenizer

    gguf = gguf_for("smollm2-135m")  # the registered name's own Q4_1 GGUF, not an export
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    options = EngineOptions(port=free_port(), parallel=2, context=512, threads=2, alias="smollm2-135m")
    url = url_of(options.host, options.port)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with running(LlamaServer.command(gguf, options), url, tmp_path / "log"):
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        text = client.completions.create(model="smollm2-135m", prompt="The capital of France is",
                                         max_tokens=16, temperature=0).choices[0].text
        chat = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=16,
                                              temperature=0)
    assert text == greedy_llama_cpp_python(gguf, "The capital of France is", 16)
    assert "Paris" in text
    # SmolLM2's ChatML template from the GGUF: <|im_start|>system ... <|im_start|>assistant\n
    rendered = load_tokenizer("smollm2-135m").apply_chat_template(messages, tokenize=False,
                                                                  add_generation_prompt=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert chat.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert chat.choices[0].message.content.strip()
