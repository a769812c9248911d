"""Speed measurements return sane numbers; bad flags are rejected before any work."""

import pytest

from llm4all.errors import UserError
from llm4all.evaluate.speed import decode_speed, main, prefill_speed
from llm4all.models.load import load


def test_prefill_and_decode_numbers(tiny_model):
    model, _ = load(tiny_model)
    p = prefill_speed(model, 32, batch=2, repeats=2)
    assert p["tokens_per_s"] == pytest.approx(64 / p["seconds"]) and p["tokens_per_s"] > 0
    d = decode_speed(model, new_tokens=8, batch=3, repeats=2)
    lat = d["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert d["tokens_per_s"] > 0 and d["batch"] == 3


@pytest.mark.slow
def test_command_with_memory(tiny_model, tmp_path):
    r = main(str(tiny_model), dtypes=["float32", "bfloat16"], prompt_lengths=[16, 64], new_tokens=4,
             batch_sizes=[1, 2], repeats=1, memory=True, out=tmp_path)
    fp32 = r["dtypes"]["float32"]
    assert [p["prompt_tokens"] for p in fp32["prefill"]] == [16, 64]
    assert [d["batch"] for d in r["dtypes"]["bfloat16"]["decode"]] == [1, 2]
    m = fp32["memory"]
    assert m["peak_rss_mib"] >= m["rss_after_load_mib"] >= m["rss_before_load_mib"] > 50
    assert (tmp_path / "speed.json").exists()


def test_bad_flags(tiny_model):
    with pytest.raises(UserError, match="--dtypes"):
        main(str(tiny_model), dtypes=["int3"])
    with pytest.raises(UserError, match="at least 1"):
        main(str(tiny_model), batch_sizes=[0])
    model, _ = load(tiny_model)
    with pytest.raises(UserError, match="--new-tokens"):
        decode_speed(model, new_tokens=1)
