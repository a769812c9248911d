"""Prompt compression (LLMLingua, LongLLMLingua, random): budgets, rankings, surprisal parity, CLI."""

from __future__ import annotations

import io
import json

import pytest
import torch

from llm4all.cli import main as cli
from llm4all.compress import prompt as pc
from llm4all.compress.surprisal import TokenStream, mean_nll
from tinymodels import tiny_texts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from llm4all.models.load import load

    return load(str(tiny_model))


def context(n: int = 4, words: int = 30, seed: int = 0) -> str:
    return " ".join(tiny_texts(n, seed=seed, words=words))


def direct_nll(model, ids: list[int]) -> torch.Tensor:
    """-log p(ids[i] | ids[:i]) for i >= 1, from one forward pass without a cache."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")


def top(scores, n):
    return sorted(sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:n])


@pytest.mark.parametrize("method", ["lingua", "longlingua", "random"])
def test_ratio_and_token_budget_are_honoured(tiny, method):
    model, tok = tiny
    text = context()
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    r = pc.compress_prompt(model, tok, text, question="the of and", instruction="she was", ratio=3,
                           method=method, segment_tokens=16)
    assert r.tokens_before == n and r.tokens_after == round(n / 3)
    assert len(tok(r.context, add_special_tokens=False)["input_ids"]) == r.tokens_after
    assert r.ratio == pytest.approx(n / round(n / 3))
    assert r.prompt.startswith("she was\n\n") and r.prompt.endswith("\n\nthe of and")
    assert r.prompt_tokens_after == r.tokens_after + 5  # instruction and question kept whole
    r = pc.compress_prompt(model, tok, text, question="the of and", target_tokens=17, method=method)
    assert r.tokens_after == 17 and len(r.kept_tokens) == 17


def test_budget_controller_takes_sentences_in_rank_order_until_past_the_cap():
    order, kept = pc.budget_controller([3.0, 1.0, 2.0, 0.0], [10, 10, 10, 10], cap=15, highest_first=True)
    assert order == [0, 2, 1, 3] and kept == [0, 2]  # 10 <= 15: take one more, then 20 > 15: stop
    order, kept = pc.budget_controller([3.0, 1.0, 2.0, 0.0], [10, 10, 10, 10], cap=25, highest_first=False)
    assert order == [3, 1, 2, 0] and kept == [3, 1, 2]


def test_dynamic_ratios_follow_eq5_and_meet_the_budget():
    tau = pc.dynamic_ratios([0, 1, 2, 3], [10, 10, 10, 10], target=20, delta_tau=0.3)
    # (1 - 2r/4)·0.3 = 0.3, 0.15, 0, -0.15; τ_doc = (20 - 3) / 40 = 0.425
    assert tau == pytest.approx([0.725, 0.575, 0.425, 0.275], abs=1e-9)
    assert pc.dynamic_ratios([1, 0], [30, 10], target=20, delta_tau=0.0) == pytest.approx([0.5, 0.5])
    clipped = pc.dynamic_ratios([0, 1], [10, 100], target=100, delta_tau=0.9)
    assert clipped[0] == 1.0
    assert sum(t * n for t, n in zip(clipped, [10, 100], strict=True)) == pytest.approx(100)


def test_question_aware_coarse_step_keeps_the_sentence_that_predicts_the_question(tiny, monkeypatch):
    """r_k (LongLLMLingua Eq. 2) on controlled log-probs: the sentence after which the question is
    least surprising is kept, whatever its place; LLMLingua's ranking keeps the most perplexing."""
    import llm4all.compress.surprisal as surprisal

    model, tok = tiny
    sentences = [t.replace(".", "") + "." for t in tiny_texts(5, seed=3, words=24)]
    marker = tok("she", add_special_tokens=False)["input_ids"][0]
    sentences[3] = "she " + sentences[3]
    sentences = [s if i == 3 else s.replace("she", "he") for i, s in enumerate(sentences)]
    q = "what did she do"
    q_ids = tok(" " + q + " " + pc.RESTRICT, add_special_tokens=False)["input_ids"]
    seen = []

    def fake(model, rows, starts, batch_tokens=2048):  # the question is likely only after sentence 3
        seen.append((rows, starts))
        return [1.0 if marker in r[: len(r) - len(q_ids)] else 5.0 for r in rows]

    monkeypatch.setattr(surprisal, "mean_nll", fake)
    text = " ".join(sentences)  # a budget of 5 tokens: the cap k·5 = 10 is below any sentence
    r = pc.compress_prompt(model, tok, text, question=q, target_tokens=5, method="longlingua")
    assert [s["kept"] for s in r.segments] == [False, False, False, True, False]
    assert [row[len(row) - len(q_ids):] for row in seen[0][0]] == [q_ids] * 5  # the question is scored
    assert seen[0][1] == [len(row) - len(q_ids) for row in seen[0][0]]
    r = pc.compress_prompt(model, tok, text, question=q, target_tokens=5, method="lingua")
    assert [s["kept"] for s in r.segments] == [True, False, False, False, False]  # ties: the first


def test_mean_nll_is_the_mean_surprisal_of_the_scored_tokens(tiny):
    model, tok = tiny
    texts = zip(tiny_texts(3), (12, 30, 7), strict=True)
    rows = [[tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"][:n]] for t, n in texts]
    starts = [5, 1, 3]
    got = mean_nll(model, rows, starts, batch_tokens=40)
    want = [float(direct_nll(model, r)[s - 1 :].mean()) for r, s in zip(rows, starts, strict=True)]
    assert got == pytest.approx(want, abs=1e-5)


def test_token_stream_scores_each_window_given_the_kept_tokens(tiny):
    """ITPC, LLMLingua Eq. 5: window j is scored after the prefix and the tokens kept before it,
    also once the conditioning slides past the model's 256 positions."""
    model, tok = tiny
    ids = tok(" ".join(tiny_texts(8, words=60)), add_special_tokens=False)["input_ids"][:300]
    prefix = [tok.bos_token_id, *ids[:3]]
    stream, kept = TokenStream(model, prefix), []
    for a in range(3, 300, 40):
        window = ids[a : a + 40]
        cond = prefix + kept[-(256 - len(window) - len(prefix)):]
        want = direct_nll(model, cond + window)[len(cond) - 1 :]
        assert torch.allclose(stream.nll(window), want, atol=1e-4)
        keep = window[::3]
        stream.keep(keep)
        kept += keep


def test_token_step_keeps_the_most_surprising_tokens(tiny):
    """One segment, ratio 2 (the coarse step keeps all at k = 2): the kept tokens are the half
    with the highest surprisal, computed directly; two segments: the second is scored given the
    tokens kept from the first."""
    model, tok = tiny
    text = context(3, words=24)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n, bos = len(ids), tok.bos_token_id
    r = pc.compress_prompt(model, tok, text, ratio=2, method="lingua", segment_tokens=1000)
    assert all(s["kept"] for s in r.segments)
    assert r.kept_tokens == top(direct_nll(model, [bos, *ids]), round(n / 2))
    half = n // 2
    r = pc.compress_prompt(model, tok, text, ratio=2, method="lingua", segment_tokens=half)
    first = [i for i in r.kept_tokens if i < half]
    assert abs(len(first) - half * round(n / 2) / n) <= 0.5 + 1e-9
    assert first == top(direct_nll(model, [bos, *ids[:half]]), len(first))
    cond = [bos, *[ids[i] for i in first]]
    second = direct_nll(model, cond + ids[half:])[len(cond) - 1 :]
    assert r.kept_tokens[len(first):] == [half + i for i in top(second, round(n / 2) - len(first))]


def test_fine_step_of_longlingua_is_contrastive_perplexity(tiny):
    """LongLLMLingua Eq. 3: s_i = NLL(x_i | x_<i) - NLL(x_i | question, x_<i)."""
    model, tok = tiny
    text, q = context(3, words=24, seed=5), "she was not"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    bos, q_ids = tok.bos_token_id, tok(q + "\n\n", add_special_tokens=False)["input_ids"]
    r = pc.compress_prompt(model, tok, text, question=q, ratio=2, method="longlingua", delta_tau=0.0,
                           segment_tokens=1000)
    contrast = direct_nll(model, [bos, *ids]) - direct_nll(model, [bos, *q_ids, *ids])[len(q_ids):]
    assert r.kept_tokens == top(contrast, round(len(ids) / 2))


def test_random_baseline_is_seeded_and_at_the_same_ratio(tiny):
    _, tok = tiny
    text = context()
    a = pc.compress_prompt(None, tok, text, ratio=4, method="random", seed=1)
    b = pc.compress_prompt(None, tok, text, ratio=4, method="random", seed=1)
    c = pc.compress_prompt(None, tok, text, ratio=4, method="random", seed=2)
    assert a.context == b.context and a.kept_tokens == b.kept_tokens
    assert a.kept_tokens != c.kept_tokens
    assert a.tokens_after == c.tokens_after == round(a.tokens_before / 4)
    assert a.kept_tokens == sorted(a.kept_tokens)  # kept in text order


def test_sentence_spans_cover_the_text_and_lead_with_their_whitespace():
    text = "  A b.  C d!\n\nE f \n\n G. H?  "
    spans = pc.sentence_spans(text)
    assert "".join(text[a:b] for a, b in spans) == text
    assert [text[a:b] for a, b in spans] == ["  A b.", "  C d!", "\n\nE f ", "\n\n G.", " H?  "]


@pytest.mark.parametrize("args, message", [
    (["--ratio", "2", "--target-tokens", "5"], "give exactly one of --ratio"),
    ([], "give exactly one of --ratio"),
    (["--ratio", "1"], "--ratio must be above 1"),
    (["--target-tokens", "0"], "--target-tokens must be at least 1"),
    (["--ratio", "2", "--segment-tokens", "-1"], "--segment-tokens must be 0"),
    (["--ratio", "2", "--method", "longlingua"], "give --question"),
    (["--ratio", "2", "EMPTY"], "the context is empty"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    path = tmp_path / "ctx.txt"
    path.write_text("   \n" if "EMPTY" in args else context(2))
    args = [a for a in args if a != "EMPTY"]
    assert cli(["compress-prompt", str(path), "--model", str(tmp_path / "no-model"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_cli_compresses_stdin_and_writes_the_json(tiny_model, tmp_path, capsys, monkeypatch):
    text = context()
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    out = tmp_path / "out"
    assert cli(["compress-prompt", "-", "--model", str(tiny_model), "--question", "the of and",
                "--ratio", "2", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    result = json.loads((out / "compressed.json").read_text())
    assert result["method"] == "longlingua" and result["input"] == "-"
    assert result["tokens_after"] == round(result["tokens_before"] / 2)
    assert result["ratio"] == pytest.approx(2, rel=0.05)
    assert printed.out.strip() == result["prompt"] and result["prompt"].endswith("the of and")
    assert "longlingua: context" in printed.err and "x)" in printed.err
    manifest = json.loads((out / "llm4all.json").read_text())
    assert manifest["command"] == "compress-prompt" and manifest["metrics"]["ratio"] == result["ratio"]


@pytest.mark.slow
def test_smollm2_keeps_the_sentence_the_question_is_about():
    """With the real SmolLM2-135M, at 4x, LongLLMLingua keeps the sentence that answers the
    question among unrelated paragraphs; the answer's words survive the token step."""
    from llm4all.models.load import load

    model, tok = load("smollm2-135m")
    text = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
            "It was designed by the company of the engineer Gustave Eiffel.\n\n"
            "Bananas are elongated, edible fruits produced by large herbaceous flowering plants. "
            "In some countries, bananas used for cooking are called plantains.\n\n"
            "Python is a high-level, general-purpose programming language. "
            "It was created by Guido van Rossum and first released in 1991.\n\n"
            "The Great Barrier Reef is the world's largest coral reef system. "
            "It lies in the Coral Sea, off the coast of Queensland, Australia.")
    r = pc.compress_prompt(model, tok, text, question="Who created the Python programming language?",
                           ratio=4)
    kept = [s["text"].strip() for s in r.segments if s["kept"]]
    assert any("Guido van Rossum" in s for s in kept)
    assert "Guid" in r.context and r.tokens_after == round(r.tokens_before / 4)
