import json
import math

import numpy as np
import pytest
import torch

from llm4all.errors import UserError
from llm4all.evaluate.perplexity import main as perplexity_main
from llm4all.evaluate.perplexity import perplexity, windows
from llm4all.models.load import load


@pytest.mark.parametrize("n, context, stride", [(10, 4, 4), (10, 4, 1), (100, 16, 5), (17, 32, 8), (2, 2, 1)])
def test_windows_score_every_token_once(n, context, stride):
    targets = []
    for begin, end, k in windows(n, context, stride):
        assert end - begin <= context and 0 < k <= end - begin - (begin == 0)
        targets.extend(range(end - k, end))
    assert targets == list(range(1, n))


def test_disjoint_windows_equal_direct_loss(tiny_model):
    model, _ = load(tiny_model)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, size=64)
    result = perplexity(model, tokens, context=64, stride=64)
    with torch.no_grad():
        ids = torch.from_numpy(tokens)[None]
        direct = model(ids, labels=ids).loss.item()
    assert result["tokens"] == 63
    assert result["nll"] == pytest.approx(direct, rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(direct), rel=1e-5)


def test_strided_equals_manual_sliding_computation(tiny_model):
    model, _ = load(tiny_model)
    tokens = np.random.default_rng(1).integers(0, 64, size=50)
    ids = torch.from_numpy(tokens)
    manual, count = 0.0, 0
    with torch.no_grad():
        for begin, end, k in windows(50, 16, 6):
            logits = model(ids[begin:end][None]).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            for t in range(end - begin - k, end - begin):
                manual -= logp[t - 1, ids[begin + t]].item()
                count += 1
    for batch_size in (1, 3):
        result = perplexity(model, tokens, context=16, stride=6, batch_size=batch_size)
        assert result["tokens"] == count == 49
        assert result["nll"] == pytest.approx(manual / count, rel=1e-5)


def test_bf16_is_close_to_fp32(tiny_model):
    tokens = np.random.default_rng(2).integers(0, 64, size=120)
    fp32 = perplexity(load(tiny_model)[0], tokens, context=32, stride=16)
    bf16 = perplexity(load(tiny_model, dtype="bfloat16")[0], tokens, context=32, stride=16)
    assert bf16["ppl"] == pytest.approx(fp32["ppl"], rel=0.02)


def test_command_on_documents_and_shards_agree(tiny_model, docs_jsonl, tmp_path):
    from llm4all.data.tokenize import main as tokenize

    tokenize([docs_jsonl], out=tmp_path / "shards", tokenizer=str(tiny_model), workers=1, val_fraction=0.0)
    on_shards = perplexity_main(str(tiny_model), tmp_path / "shards", split="train", context=64,
                                out=tmp_path / "res")
    on_docs = perplexity_main(str(tiny_model), docs_jsonl, context=64)
    assert on_shards["ppl"] == pytest.approx(on_docs["ppl"], rel=1e-6)
    saved = json.loads((tmp_path / "res" / "perplexity.json").read_text())
    assert saved["ppl"] == pytest.approx(on_shards["ppl"])


def test_bad_arguments(tiny_model, docs_jsonl, tmp_path):
    with pytest.raises(UserError, match="stride must be in"):
        windows(10, 4, 5)
    with pytest.raises(UserError, match="no index.json|no such file"):
        perplexity_main(str(tiny_model), tmp_path / "nothing")
    with pytest.raises(UserError, match="unknown model"):
        perplexity_main("not-a-model", docs_jsonl)


def test_full_forward_path_equals_chunked_head(tiny_model):
    model, _ = load(tiny_model)
    tokens = np.random.default_rng(3).integers(0, 64, size=90)
    chunked = perplexity(model, tokens, context=32, stride=10, batch_size=2)
    full = perplexity(model, tokens, context=32, stride=10, batch_size=2, full_forward=True)
    assert full["nll"] == pytest.approx(chunked["nll"], rel=1e-5)
