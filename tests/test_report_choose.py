"""Which model to ship: the goal applied to measured variants, and the answer.json shape."""

from __future__ import annotations

import pytest

from llm4all.errors import UserError
from llm4all.report.choose import Goal, answer_json, pareto, recommend
from llm4all.report.collect import _new


def variant(name, kind, ppl, size_mib, ms, source="eval perplexity (x)"):
    v = _new(name, kind, None)
    v.update(kind=kind, ppl=ppl, ppl_source=source, size_bytes=size_mib * 2**20, latency_ms=ms,
             runtime="llm4all int4 kernels" if kind == "compressed" else "torch")
    return v


VARIANTS = [
    variant("teacher", "teacher", 30.3, 513, 60.0),
    variant("adapted", "adapted", 24.0, 513, 60.0),
    variant("adapted-int8", "compressed", 24.1, 170, 25.0),
    variant("adapted-int4", "compressed", 25.9, 110, 17.0),   # within 10% of 24.0 (26.4), smallest
    variant("adapted-int3", "compressed", 28.0, 90, 16.0),    # smaller still, but 16.7% worse
    variant("student", "student", 70.0, 270, 30.0),
    variant("fat-int4", "compressed", 26.0, 120, 18.0),       # beaten on all three by adapted-int4
    variant("unmeasured", "compressed", 25.0, 50, None),      # no latency: cannot be recommended
    variant("loop-only", "student", 10.0, 40, 5.0, source="distill validation"),  # not the common tokens
]


def test_default_goal_ships_the_smallest_and_fastest_within_ten_percent():
    pick, why = recommend(VARIANTS, Goal())
    assert Goal().prefer == "balanced" and pick["name"] == "adapted-int4"
    assert "the smallest and fastest model within 10% of the best perplexity (24, adapted)" in why
    assert "4.7× smaller, decodes 3.5× as fast, perplexity −14.5%".replace("−", "-") in why


@pytest.mark.parametrize("goal, name", [
    (Goal(prefer="speed"), "adapted-int4"),
    (Goal(prefer="size"), "adapted-int4"),
    (Goal(prefer="quality"), "adapted"),
    (Goal(tolerance=0.2), "adapted-int3"),
    (Goal(tolerance=0.0), "adapted"),
])
def test_goals(goal, name):
    assert recommend(VARIANTS, goal)[0]["name"] == name


def test_balanced_prefers_a_slightly_larger_much_faster_file():
    """A GGUF 3% larger than the packed int4 model but 3× faster in llama.cpp: balanced ships the
    GGUF (least size × latency), prefer=size the packed model."""
    both = [variant("adapted", "adapted", 24.0, 513, 60.0),
            variant("int4", "compressed", 25.9, 85, 15.0),
            variant("gguf", "export", 25.9, 88, 5.0)]
    assert recommend(both, Goal())[0]["name"] == "gguf"
    assert recommend(both, Goal(prefer="size"))[0]["name"] == "int4"


def test_the_bar_is_the_best_perplexity_even_of_an_untimed_model():
    """An adapted fp32 model read 23.85 but was not timed: its int4 copy at 26.34 (+10.4%) is not
    within 10%; the answer says so and names the closest timed model rather than hiding the bar."""
    runs = [variant("adapted", "adapted", 23.85, 513, None),
            variant("int4", "compressed", 26.34, 85, 11.0), variant("teacher", "teacher", 30.3, 513, 37.0)]
    pick, why = recommend(runs, Goal())
    assert pick["name"] == "int4"
    assert why.startswith("No timed model is within 10% of the best perplexity (23.85, adapted, not timed)")
    assert "+10.4%" in why
    assert recommend(runs, Goal(tolerance=0.2))[0]["name"] == "int4"
    assert recommend(runs, Goal(tolerance=0.2))[1].startswith("int4 is the smallest and fastest")


def test_pareto_drops_a_model_beaten_on_every_axis():
    names = {v["name"] for v in pareto([v for v in VARIANTS if v["latency_ms"] and
                                        v["ppl_source"].startswith("eval")])}
    assert "fat-int4" not in names and "student" not in names and "adapted-int4" in names


def test_nothing_measured_means_no_recommendation():
    pick, why = recommend([variant("a", "teacher", 30.0, 500, None)], Goal())
    assert pick is None and "none can be recommended" in why


def test_answer_json_shape():
    answer = answer_json(VARIANTS, Goal())
    assert answer["teacher"] == "teacher" and answer["recommended"] == "adapted-int4"
    row = next(v for v in answer["variants"] if v["name"] == "adapted-int4")
    assert row["role"] == "compressed" and row["ppl"] == 25.9 and row["file_bytes"] == 110 * 2**20
    assert row["decode_ms_per_token"] == 17.0 and row["runtime"] == "llm4all int4 kernels"
    loop = next(v for v in answer["variants"] if v["name"] == "loop-only")
    assert loop["ppl"] is None  # a training loop's own validation is not the common measurement
    assert {"name", "role", "ppl", "file_bytes", "params", "decode_ms_per_token", "runtime",
            "peak_rss_bytes", "train_flops"} <= set(row)


@pytest.mark.parametrize("goal, message", [
    ({"tolerence": 0.1}, "unknown key 'tolerence'"),
    ({"prefer": "cheap"}, "prefer one of balanced, size, speed, quality"),
    ({"tolerance": -1}, "tolerance in"),
])
def test_bad_goals(goal, message):
    with pytest.raises(UserError, match=message):
        Goal.parse(goal)


def test_ship_commands_for_a_gguf_and_for_a_packed_model():
    from llm4all.report.choose import ship_commands

    packed = variant("int4", "compressed", 25.0, 88, 17.0)
    packed["path"] = "/runs/q/int4"
    gguf = variant("export", "export", 25.1, 87, 4.0)
    gguf.update(path="/runs/q/export/model-auto.gguf", source="int4")
    both = [packed, gguf]
    on_gguf = ship_commands(gguf, both)
    assert on_gguf["chat"] == "llm4all chat /runs/q/export/model-auto.gguf"
    assert on_gguf["serve"] == "llm4all serve /runs/q/export/model-auto.gguf --port 8080"
    assert on_gguf["llama_server"].startswith("llama-server --model /runs/q/export/model-auto.gguf")
    assert on_gguf["vllm"].startswith("llm4all export /runs/q/int4 --format hf")
    on_packed = ship_commands(packed, both)
    assert on_packed["chat"] == "llm4all chat /runs/q/int4"
    assert on_packed["serve"] == "llm4all serve /runs/q/export/model-auto.gguf --port 8080"  # its export
    assert ship_commands(None, both) == {}


def test_energy_is_shown_beside_latency_and_marked_when_estimated():
    from llm4all.report.answer import variant_table

    measured = variant("gguf", "export", 25.9, 88, 5.0)
    measured.update(joules_per_token=0.0242, energy_source="estimate (Horowitz 2014 per-operation energies)")
    rapl = variant("int4", "compressed", 25.9, 85, 15.0)
    rapl.update(joules_per_token=0.41, energy_source="RAPL (2 counters: the whole package)")
    html, missing = variant_table([measured, rapl])
    assert "<th>mJ / token</th>" in html and "mJ / token" not in missing
    assert "24.2 est." in html and ">410<" in html and "410 est." not in html
    assert html.index("<th>ms / token (batch 1)</th>") < html.index("<th>mJ / token</th>")
    row = next(v for v in answer_json([measured, rapl], Goal())["variants"] if v["name"] == "gguf")
    assert row["joules_per_token"] == 0.0242 and row["energy_source"].startswith("estimate")
