"""Factual-consistency filtering of summarisation pairs (issue 19 item 5): the rule-based entities
and numbers on hand-written cases, the selector's decisions and reasons, curate --format summary
end to end, the shipped pairs (== their rebuild), recall and precision on the planted ones, and
the optional entailment scorers on tiny in-process models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from llm4all.curate.entities import Source, check, entities, numbers, unigram_precision
from llm4all.curate.pipeline import main as curate
from llm4all.curate.select.factual import Factual
from llm4all.data.pairs import read_pairs
from llm4all.errors import UserError


def names(text: str, document: str = "") -> list[str]:
    source = Source(document)
    return [m.text for m in entities(text, source.capitalised, source.lower_case)]


def values(text: str) -> list[str]:
    return [m.key[0] for m in numbers(text)]


def test_entities_names_acronyms_and_what_is_not_one():
    text = ("In 1998, Jeff joined the Python Software Foundation and the Bank of England; "
            "NetworkManager (NM) met Ludwig van Beethoven. We said, I think so.")
    assert names(text) == ["Jeff", "Python Software Foundation", "Bank of England", "NetworkManager",
                           "NM", "Ludwig van Beethoven"]
    # a sentence-initial capital is not a name unless the document capitalises the word elsewhere
    assert names("Network interfaces are configured here.") == []
    assert names("Debian manages them.", "It runs on Debian.") == ["Debian"]
    assert names("Ubuntu Reference explains it.") == ["Ubuntu Reference"]  # it starts a name
    # a capitalised common word ("Come" after a comma, in speech) is not a name
    assert names("And the LORD said unto Noah, Come thou.", "they come in") == ["LORD", "Noah"]
    assert names("Using Python, you write code.", "using it") == ["Python"]
    # commas, quotes and brackets end a name
    assert names("The sons of Noah, Shem, Ham, and Japheth.") == ["Noah", "Shem", "Ham", "Japheth"]


@pytest.mark.parametrize(("text", "expected"), [
    ("It costs $1,024.50 or 3.11 or -1.", ["1024.50", "3.11", "-1"]),
    ("50% of them, fifty per cent, 7 percent", ["50%", "7%", "50%"]),
    ("nine hundred and thirty years, an hundred and seven and twenty", ["930", "127"]),
    ("the twenty-first day, the 3rd time, the third", ["ord:3", "ord:21", "ord:3"]),
    ("on 2021-03-05 at 10:30, Python 3.4.1, the 1980s, a 32-bit build", ["2021-03-05", "10:30", "3.4.1",
                                                                          "1980s", "32"]),
    ("bz2, UTF-8, 0x03 and one of them, first of all", []),  # glued to letters; pronoun; ordinal 1
])
def test_numbers_hand_cases(text, expected):
    assert values(text) == expected


def test_support_normalises_case_possessives_plurals_and_hyphens():
    document = "The Debian Reference's Wi-Fi chapter covers GNU/Linux and three Pythons in 2021."
    s = check("debian reference explains WiFi on GNU Linux for 3 Python users in 2021.", document)
    assert s.unsupported_entities == [] and s.unsupported_numbers == [] and s.entity_precision == 1.0
    s = check("Ubuntu Reference explains Hampshire and Ham for 4 users.", document + " Hampshire")
    assert s.unsupported_entities == ["Ubuntu Reference", "Ham"]  # a span; word boundaries
    assert s.unsupported_numbers == ["4"] and s.number_precision == 0.0
    assert s.entity_precision == pytest.approx(1 / 3)
    lenient = check("Ubuntu Reference explains Hampshire.", document + " Hampshire", match="nan2021")
    assert lenient.unsupported_entities == []  # Nan et al.'s level-2 match: "Reference" is found
    assert check("Nothing to check here.", "").entity_precision == 1.0
    assert unigram_precision("the Debian chapter", document) == pytest.approx(1.0)
    assert unigram_precision("the Ubuntu chapter", document) == pytest.approx(2 / 3)


PAIRS = [
    {"id": "ok", "document": "Joseph met Pharaoh in Egypt in 1611 with seven officers.",
     "summary": "In Egypt, Joseph met Pharaoh with 7 officers."},
    {"id": "name", "article": "Joseph met Pharaoh in Egypt.", "highlights": "In Egypt, Moses met Pharaoh."},
    {"id": "number", "text": "The module has 3 functions.", "summary": "The module has 4 functions."},
    {"id": "ours", "text": "Joseph met Pharaoh and Moses.", "meta": {"document": "Joseph met Pharaoh.",
                                                                     "part": "x"}},
]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_selector_decisions_reasons_and_bounds(tmp_path):
    docs = list(read_pairs(_write(tmp_path / "pairs.jsonl", PAIRS)))
    ids, texts, metas = [d.id for d in docs], [d.text for d in docs], [d.meta for d in docs]
    decisions = Factual()(ids, texts, {}, metas=metas)
    assert [d.keep for d in decisions] == [True, False, False, False]
    name, number, ours = (d.reason for d in decisions[1:])
    assert name["reason"] == "entity_precision < 1" and name["unsupported_entities"] == ["Moses"]
    assert name["entity_precision"] == pytest.approx(2 / 3, abs=1e-4) and "Nan et al. 2021" in name["source"]
    assert number["reason"] == "number_precision < 1" and number["unsupported_numbers"] == ["4"]
    assert ours["unsupported_entities"] == ["Moses"]
    loose = Factual(min_entity_precision=0.5, min_number_precision=0.0)(ids, texts, {}, metas=metas)
    assert [d.keep for d in loose] == [True, True, True, True]
    with pytest.raises(UserError, match="match must be one of span, nan2021"):
        Factual(match="fuzzy")
    with pytest.raises(UserError, match="min_entity_precision must be in"):
        Factual(min_entity_precision=2)
    with pytest.raises(UserError, match="--format summary"):
        Factual()(ids, texts, {})
    with pytest.raises(UserError, match="no meta.document"):
        Factual()(ids[:1], texts[:1], {}, metas=[{}])


def test_curate_format_summary_end_to_end(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", PAIRS)
    summary = curate([path], out=tmp_path / "out", format="summary", workers=1, lang_id="meta",
                     signals=["word_entropy"], steps=[{"select": "factual"}],
                     curriculum={"signal": "entity_precision", "order": "easy_to_hard"})
    assert summary["read"] == 4 == summary["kept"] + summary["removed"]
    assert summary["removed_by_step"] == {"select:factual": {"entity_precision < 1": 2,
                                                             "number_precision < 1": 1}}
    removed = {r["id"]: r for r in map(json.loads, _lines(tmp_path / "out" / "removed.jsonl.zst"))}
    assert removed["name"]["reason"]["unsupported_entities"] == ["Moses"]
    assert removed["name"]["meta"]["document"] == "Joseph met Pharaoh in Egypt."
    kept = list(read_pairs(tmp_path / "out" / "kept.jsonl.zst"))  # reads back as pairs, unchanged
    assert [(d.id, d.text, d.meta["document"]) for d in kept] == [
        ("ok", PAIRS[0]["summary"], PAIRS[0]["document"])]
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "signals.parquet").to_pydict()
    assert table["entity_precision"] == pytest.approx([1.0, 2 / 3, 1.0, 1 / 2])
    assert table["number_precision"] == [1.0, 1.0, 0.0, 1.0]
    assert table["unsupported_entities"] == [0, 1, 0, 1] and table["summary_numbers"][0] == 1
    # the columns serve the other steps: a bounds filter on them (its reason has no names)
    again = curate([path], out=tmp_path / "bounds", format="summary", workers=1, lang_id="meta",
                   signals=["word_entropy"],
                   steps=[{"filter": "bounds", "bounds": {"entity_precision": [1, None]}}])
    assert again["kept"] == 2


def test_missing_summary_is_a_one_line_error_naming_file_line_and_field(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [PAIRS[0], {"id": "x", "document": "Only a document."}])
    with pytest.raises(UserError) as err:
        curate([path], out=tmp_path / "out", format="summary", workers=1, lang_id="meta",
               signals=["word_entropy"], steps=[{"select": "factual"}])
    message = str(err.value)
    assert message == f"{path}: line 2: field 'summary' must be a string (missing)"
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="line 1: field 'summary' must be a string"):
        list(read_pairs(_write(tmp_path / "plain.jsonl", [{"text": "a plain document"}])))
    with pytest.raises(UserError, match="--format must be text or chat or summary, got 'pairs'"):
        curate([path], out=tmp_path / "o2", format="pairs")


def _lines(path: Path) -> list[str]:
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read().decode().splitlines()


@pytest.fixture(scope="module")
def shipped() -> list:
    from llm4all.data.summaries import shipped_path

    return list(read_pairs(shipped_path()))


def test_shipped_pairs_are_the_rebuild_and_each_planted_change_is_recorded(shipped):
    from llm4all.data.summaries import build, shipped_path

    rows = [json.loads(line) for line in _lines(shipped_path())]
    assert rows == build()
    by_id = {r["id"]: r for r in rows}
    planted = [r for r in rows if "planted" in r["meta"]]
    assert len(rows) - len(planted) > 400 and len(planted) > 200
    for r in planted:
        real = by_id[r["meta"]["of"]]
        change = r["meta"]["change"]
        assert r["document"] == real["document"] and r["summary"] != real["summary"]
        assert change["to"] in r["summary"] and change["from"] in real["summary"]
        in_document = re.search(rf"(?<![\w.,]){re.escape(change['to'])}(?!\w)", r["document"], re.I)
        assert (in_document is None) == r["meta"]["planted"].startswith("extrinsic"), r["id"]


def test_recall_and_precision_on_the_planted_pairs(shipped):
    """Bounds measured (benchmarks/factual_consistency.py, docs/benchmarks.md): extrinsic recall
    0.979, the planted change itself caught in 82 of 85 pairs whose original is kept, precision
    0.478 with every removed real lead counted as a false positive; a ROUGE-1 threshold removing
    as many pairs: recall 0.657, precision 0.378."""
    kind = np.array([d.meta.get("planted", "real") for d in shipped])
    extrinsic, planted = np.char.startswith(kind.astype(str), "extrinsic"), kind != "real"
    decisions = Factual()([d.id for d in shipped], [d.text for d in shipped], {},
                          metas=[d.meta for d in shipped])
    drop = np.array([not d.keep for d in decisions])
    assert drop[extrinsic].mean() >= 0.95
    assert drop[kind == "extrinsic_number"].mean() >= 0.9
    index = {d.id: i for i, d in enumerate(shipped)}
    kept_original = np.array([d.meta.get("of") in index and not drop[index[d.meta["of"]]] for d in shipped])
    assert drop[extrinsic & kept_original].mean() >= 0.93  # the change itself, not the lead
    precision = drop[planted].sum() / drop.sum()
    assert precision >= 0.45 and drop[kind == "real"].mean() <= 0.5
    overlap = np.array([unigram_precision(d.text, d.meta["document"]) for d in shipped])
    baseline = np.zeros(len(shipped), bool)
    baseline[np.lexsort((np.arange(len(shipped)), overlap))[: drop.sum()]] = True
    assert drop[extrinsic].mean() > baseline[extrinsic].mean() + 0.2
    assert precision > baseline[planted].sum() / baseline.sum()


# ---- the optional entailment scorers, on tiny in-process models ----

WORDS = ("joseph met pharaoh in egypt moses the module has functions is summary supported by "
         "document answer yes no . , : ? Yes No Document Summary Is").split()


def _tokenizer(bos: str, eos: str, **kwargs):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, bos: 1, eos: 2, "<pad>": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", **kwargs)


@pytest.fixture(scope="module")
def nli_model(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("nli") / "model"
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=3,
                        initializer_range=0.5,  # outputs that depend on the input
                        id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
                        label2id={"entailment": 0, "neutral": 1, "contradiction": 2})
    torch.manual_seed(0)
    BertForSequenceClassification(config).eval().save_pretrained(path)
    _tokenizer("[CLS]", "[SEP]", cls_token="[CLS]", sep_token="[SEP]").save_pretrained(path)
    return path


@pytest.mark.usefixtures("one_torch_thread")
def test_summac_zs_equals_its_definition_and_drops_with_a_reason(nli_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llm4all.curate.entailment import entailment_scores, sentences

    document = "Joseph met Pharaoh in Egypt. The module has functions. Moses met the module."
    summaries = ["Joseph met Pharaoh. Moses has functions.", "The module is in Egypt."]
    scores, scorer = entailment_scores([document] * 2, summaries, str(nli_model))
    assert scorer == "summac_zs"
    net = AutoModelForSequenceClassification.from_pretrained(nli_model).eval()
    tok = AutoTokenizer.from_pretrained(nli_model)
    for summary, got in zip(summaries, scores, strict=True):
        image = np.array([[torch.softmax(net(**tok(p, h, return_tensors="pt")).logits[0], -1).detach().numpy()
                           for h in sentences(summary)] for p in sentences(document)])  # (N_doc, N_sum, 3)
        expected = np.mean(image[..., 0].max(0) - image[..., 2].max(0))  # Laban et al. 2022, SummaC-ZS
        assert got == pytest.approx(expected, abs=1e-5)
    assert abs(scores[0] - scores[1]) > 1e-4, scores
    bound = float(np.mean(scores))  # drops the lower-scoring pair
    decisions = Factual(entailment=str(nli_model), min_entailment=bound)(
        ["a", "b"], summaries, {}, metas=[{"document": document}] * 2)
    low = int(np.argmin(scores))
    assert [d.keep for d in decisions] == [k != low for k in range(2)]
    reason = decisions[low].reason
    assert reason["scorer"] == "summac_zs" and reason["entailment"] == pytest.approx(scores[low], abs=1e-4)
    assert reason["reason"] == f"entailment < {bound:g}"


@pytest.mark.usefixtures("one_torch_thread")
def test_lm_yes_probability_equals_a_direct_forward_pass(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm4all.curate.entailment import FACT_PROMPT, lm_scores

    path = tmp_path / "lm"
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(1)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tok = _tokenizer("<s>", "</s>", bos_token="<s>", eos_token="</s>")
    tok.save_pretrained(path)
    pairs = [("Joseph met Pharaoh in Egypt.", "Moses met Pharaoh."), ("The module has functions.", "Yes.")]
    got = lm_scores([d for d, _ in pairs], [s for _, s in pairs], str(path), dtype="float32", batch_size=2)
    net = LlamaForCausalLM.from_pretrained(path).eval()
    yes, no = tok(" yes")["input_ids"][0], tok(" no")["input_ids"][0]
    yes2, no2 = tok(" Yes")["input_ids"][0], tok(" No")["input_ids"][0]
    for (document, summary), score in zip(pairs, got, strict=True):
        text = FACT_PROMPT.format(document=document, summary=summary) + "\nAnswer:"
        with torch.no_grad():
            logits = net(torch.tensor([tok(text)["input_ids"]])).logits[0, -1]
        p = torch.softmax(logits[[yes, yes2, no, no2]], -1)
        assert score == pytest.approx(float(p[:2].sum()), abs=1e-5)
