"""Log-likelihood task scoring: parity with a direct computation, acc_norm, task files, lm-eval."""

import json
from pathlib import Path

import pytest
import torch

from llm4all.errors import UserError
from llm4all.evaluate.tasks import (
    TASK_DIR,
    Task,
    build_demo_cloze,
    build_kjv_next_verse,
    encode_pair,
    load_task,
    loglikelihoods,
    main,
    score_task,
)
from llm4all.models.load import load

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), one unbatched forward pass over the whole sequence."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = tokenizer(context + continuation, add_special_tokens=False)["input_ids"][len(ctx):]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


def test_batched_scores_equal_direct_computation(tiny_model):
    model, tok = load(tiny_model)
    pairs = [("the of and", " to in"), ("he was", " with"),
             ("a is that for it as was with be by", " on not he"), ("she", " there one all we can")]
    for batch_size in (1, 3):
        scores = loglikelihoods(model, tok, pairs, batch_size=batch_size)
        for (ctx, cont), (ll, _, n) in zip(pairs, scores, strict=True):
            assert ll == pytest.approx(direct_loglikelihood(model, tok, ctx, cont), abs=1e-4)
            assert n == len(cont.split())


def test_greedy_flag_matches_argmax(tiny_model):
    model, tok = load(tiny_model)
    ids = tok("the of and", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        best = model(torch.tensor([ids])).logits[0, -1].argmax().item()
    word = tok.convert_ids_to_tokens(best)
    other = "she" if word != "she" else "he"
    pairs = [("the of and", " " + word), ("the of and", " " + other)]
    (_, hit, _), (_, miss, _) = loglikelihoods(model, tok, pairs)
    assert hit and not miss


def test_acc_norm_divides_by_characters(tiny_model, monkeypatch):
    """Hand example: lls -3 (1 char) and -4 (8 chars): acc picks choice 0, acc_norm choice 1."""
    import llm4all.evaluate.tasks as tasks

    monkeypatch.setattr(tasks, "loglikelihoods", lambda *a, **k: [(-3.0, False, 1), (-4.0, False, 2)])
    task = Task(name="t", type="multiple_choice", template="{q}", answer="label", choices="choices",
                items=[{"q": "x", "choices": ["a", "abcdefgh"], "label": 1}], metrics=["acc", "acc_norm"])
    r = score_task(None, None, task)
    assert r["acc"] == 0.0 and r["acc_norm"] == 1.0  # -3/1 < -4/8 = -0.5
    assert r["predictions"][0]["pred"] == 0 and r["predictions"][0]["pred_norm"] == 1


def test_encode_pair_moves_trailing_space():
    class Chars:  # a character tokenizer, so boundaries are visible
        bos_token_id, eos_token_id = 0, 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    ctx, cont = encode_pair(Chars(), "ab ", "c")
    assert ctx == [97, 98] and cont == [32, 99]
    assert encode_pair(Chars(), "", "c") == ([0], [99])


def test_shipped_tasks_load_and_score(tiny_model, tmp_path):
    result = main(str(tiny_model), tasks=["kjv-next-verse", "demo-cloze"], limit=5, out=tmp_path)
    r = result["results"]
    assert r["kjv-next-verse"]["items"] == 5 and r["kjv-next-verse"]["chance"] == pytest.approx(0.25)
    assert 0 <= r["kjv-next-verse"]["acc"] <= 1 and r["demo-cloze"]["ppl"] > 1
    assert json.loads((tmp_path / "tasks.json").read_text())["results"].keys() == r.keys()
    assert len(json.loads((tmp_path / "demo-cloze.predictions.json").read_text())) == 5


@pytest.mark.skipif(not (DEMO / "manifest.json").exists(), reason="needs the demo corpus checkout")
def test_shipped_items_rebuild_from_demo_corpus():
    for name, items in (("demo-cloze", build_demo_cloze(DEMO)),
                        ("kjv-next-verse", build_kjv_next_verse(DEMO))):
        shipped = [json.loads(s) for s in (TASK_DIR / f"{name}.jsonl").read_text().splitlines()]
        assert shipped == items
    for item in build_kjv_next_verse(DEMO):
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4


def _write(tmp_path, text: str, items: str = '{"q": "x", "choices": ["a", "b"], "label": 0}\n') -> Path:
    (tmp_path / "items.jsonl").write_text(items)
    (tmp_path / "t.yaml").write_text(text)
    return tmp_path / "t.yaml"


GOOD = "name: t\ndata: items.jsonl\ntemplate: '{q}'\nchoices: choices\nanswer: label\n"


def test_bad_task_inputs(tmp_path):
    assert load_task(_write(tmp_path, GOOD)).items[0]["q"] == "x"
    with pytest.raises(UserError, match="no such task file"):
        load_task(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="unknown task 'kjv-next-vers'.*did you mean 'kjv-next-verse'"):
        load_task("kjv-next-vers")
    with pytest.raises(UserError, match="not valid YAML"):
        load_task(_write(tmp_path, "name: [t\n"))
    with pytest.raises(UserError, match="missing key 'answer'"):
        load_task(_write(tmp_path, GOOD.replace("answer: label\n", "")))
    with pytest.raises(UserError, match="unknown key 'choice'"):
        load_task(_write(tmp_path, GOOD + "choice: x\n"))
    with pytest.raises(UserError, match="few_shot"):
        load_task(_write(tmp_path, GOOD + "few_shot: 5\n"))
    with pytest.raises(UserError, match="metrics"):
        load_task(_write(tmp_path, GOOD + "metrics: [f1]\n"))
    with pytest.raises(UserError, match=r"items.jsonl:2: not valid JSON"):
        load_task(_write(tmp_path, GOOD, '{"q": "x", "choices": ["a"], "label": 0}\n{oops\n'))
    with pytest.raises(UserError, match=r"items.jsonl:1: item has no field 'label'"):
        load_task(_write(tmp_path, GOOD, '{"q": "x", "choices": ["a"]}\n'))


def test_unknown_task_fails_before_loading_the_model(tmp_path):
    with pytest.raises(UserError, match="unknown task"):
        main("no-such-model", tasks=["nope"], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lm_eval_adapter_matches_our_scores(tiny_model):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from llm4all.evaluate.harness import Llm4allLM, lm_eval_config

    model, tok = load(tiny_model)
    manager = TaskManager(include_defaults=False)
    lm = Llm4allLM(model, tok, batch_size=8)
    for name in ("kjv-next-verse", "demo-cloze"):
        task = load_task(name)
        ours = score_task(model, tok, task, limit=12)
        theirs = lm_eval.simple_evaluate(model=lm, tasks=[lm_eval_config(task)], limit=12, log_samples=False,
                                         bootstrap_iters=0, task_manager=manager)["results"][name]
        assert theirs["acc,none"] == pytest.approx(ours["acc"])
        if name == "demo-cloze":
            assert theirs["perplexity,none"] == pytest.approx(ours["ppl"], rel=1e-6)
        else:
            assert theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"])


def test_lm_eval_rolling_and_generate(tiny_model):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from llm4all.evaluate.harness import Llm4allLM

    model, tok = load(tiny_model)
    lm = Llm4allLM(model, tok)
    text = "the of and to in a is that"
    req = Instance("loglikelihood_rolling", {}, (text,), 0)
    (rolling,) = lm.loglikelihood_rolling([req])
    bos = tok.bos_token_id
    ids = [bos] + tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    assert rolling == pytest.approx(sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1)), abs=1e-4)
    request = Instance("generate_until", {}, ("the of", {"until": ["."], "max_gen_toks": 5}), 0)
    gen = lm.generate_until([request])
    assert isinstance(gen[0], str) and "." not in gen[0]
