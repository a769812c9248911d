import json

import numpy as np
import pytest

from llm4all.curate import curriculum, mixture
from llm4all.curate.pipeline import main as curate
from llm4all.curate.planted import plant
from llm4all.data.document import Document
from llm4all.data.readers import read_documents
from llm4all.data.writers import write_documents
from llm4all.errors import UserError

PROSE = ("The river runs past the old mill and the children of the village walk along it to school "
         "every morning, talking about the weather, the harvest and the stories their parents told "
         "them the night before. ")


VOCAB = ("garden window morning letter station harbour winter summer teacher doctor market "
         "village mountain forest bridge kitchen candle silver golden quiet bright gentle sudden "
         "ancient narrow wooden painted broken hidden distant").split()


def story(i: int) -> str:
    import random

    rng = random.Random(i)
    words = " ".join(rng.choice(VOCAB) for _ in range(40))
    return f"Story {i}. " + PROSE + f"Then {words}. It was day {i} of the year."


def corpus(tmp_path, n=30):
    docs = [Document(f"d{i:03d}", story(i), {"lang": "en" if i % 3 else "fr"}) for i in range(n)]
    docs.append(Document("copy", docs[4].text.upper(), {"lang": "en"}))
    docs.append(Document("junk", "$$$ ### 123 @@@ " * 40, {"lang": "en"}))
    path = tmp_path / "in.jsonl"
    write_documents(path, docs)
    return path, docs


def test_every_document_is_kept_or_removed_with_a_reason(tmp_path, monkeypatch):
    import llm4all.curate.pipeline as pipeline

    monkeypatch.setattr(pipeline, "SIGNAL_ROWS", 7)  # signals.parquet written in parts of 7 rows
    path, docs = corpus(tmp_path)
    summary = curate([path], out=tmp_path / "out", workers=1, shard_docs=7,
                     signals=["word_entropy", "gopher_quality", "gopher_repetition"])
    kept = list(read_documents(tmp_path / "out" / "kept.jsonl.zst"))
    removed = [json.loads(line) for line in _lines(tmp_path / "out" / "removed.jsonl.zst")]
    assert summary["read"] == len(docs) == len(kept) + len(removed)
    assert sorted([d.id for d in kept] + [r["id"] for r in removed]) == sorted(d.id for d in docs)
    by_id = {r["id"]: r for r in removed}
    assert by_id["copy"]["step"] == "dedup:exact" and by_id["copy"]["reason"]["survivor"] == "d004"
    assert by_id["junk"]["step"] == "filter:published"
    assert "Rae et al. 2021" in by_id["junk"]["reason"]["source"]
    assert [d.id for d in kept] == [d.id for d in docs if d.id in {k.id for k in kept}]  # input order
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "signals.parquet")
    assert table.num_rows == len(docs) and "word_entropy" in table.column_names
    assert table.column("id").to_pylist() == [d.id for d in docs]
    assert pq.ParquetFile(tmp_path / "out" / "signals.parquet").num_row_groups == -(-len(docs) // 7) > 1


def test_rerun_reuses_cached_shards_and_engine_results_match(tmp_path):
    path, _ = corpus(tmp_path)
    first = curate([path], out=tmp_path / "a", workers=2, shard_docs=8, signals=["ttr", "mtld"],
                   steps=[{"dedup": "exact"}])
    assert first["engine_stats"]["computed"] == 4
    second = curate([path], out=tmp_path / "a", workers=1, shard_docs=8, signals=["ttr", "mtld"],
                    steps=[{"dedup": "exact"}])
    assert second["engine_stats"] == {**second["engine_stats"], "cached": 4, "computed": 0}
    import pyarrow.parquet as pq

    one = curate([path], out=tmp_path / "b", workers=1, shard_docs=100, signals=["ttr", "mtld"],
                 steps=[{"dedup": "exact"}])
    assert one["kept"] == first["kept"]
    a, b = (pq.read_table(tmp_path / x / "signals.parquet").to_pydict() for x in "ab")
    assert a == b


@pytest.mark.slow
def test_ray_engine_gives_the_same_kept_and_removed_sets(tmp_path):
    pytest.importorskip("ray")
    path, _ = corpus(tmp_path)
    kwargs = {"signals": ["ttr", "gopher_quality"], "shard_docs": 10}
    local = curate([path], out=tmp_path / "local", engine="local", workers=1, **kwargs)
    ray_run = curate([path], out=tmp_path / "ray", engine="ray", workers=2, **kwargs)
    assert ray_run["engine_stats"]["computed"] == local["engine_stats"]["computed"]  # no shared cache
    for name in ("kept.jsonl.zst", "removed.jsonl.zst"):
        assert _lines(tmp_path / "local" / name) == _lines(tmp_path / "ray" / name)
    # the steps that run on Ray Data ran there (the others in the driver, on the same decisions)
    assert [r["ran_on"] for r in ray_run["steps"]] == ["ray", "ray", "ray"]
    assert all(r["ran_on"] == "driver" for r in local["steps"])


def test_when_limits_a_step_to_matching_documents(tmp_path):
    docs = [Document("en1", "tiny", {"lang": "en"}), Document("fr1", "petit", {"lang": "fr"})]
    write_documents(tmp_path / "x.jsonl", docs)
    summary = curate([tmp_path / "x.jsonl"], out=tmp_path / "o", workers=1, signals=["gopher_quality"],
                     steps=[{"filter": "published", "only": ["word_count"], "when": {"lang": "en"}}],
                     lang_id="meta")
    assert summary["kept"] == 1 and summary["steps"][0]["judged"] == 1


def test_identified_language_replaces_a_wrong_declared_one(tmp_path):
    """issue 17: `when:` and the mixture use the language lid.176 identifies, not meta.lang."""
    import zstandard

    french = ("Le chat dort sur le canapé pendant que la pluie tombe sur la ville. Les enfants "
              "reviennent de l'école et racontent leur journée à leurs parents.")
    english = ("The committee met on Tuesday to discuss the new budget, and after a long debate the "
               "members agreed to fund the library for another year. The mayor thanked the volunteers "
               "who keep the reading rooms open in the evenings, and the treasurer promised a full "
               "report on the repairs to the roof before the end of the winter season.")
    docs = [Document("a", english, {"lang": "en"}), Document("b", french, {"lang": "en"}),  # mislabelled
            Document("c", french.replace("chat", "chien"), {})]
    write_documents(tmp_path / "x.jsonl", docs)
    step = {"filter": "published", "only": ["word_count"], "when": {"lang": "en"}}
    trusted = curate([tmp_path / "x.jsonl"], out=tmp_path / "m", workers=1, signals=["gopher_quality"],
                     steps=[step], lang_id="meta")
    assert trusted["steps"][0]["judged"] == 2  # the declared labels: a and b
    found = curate([tmp_path / "x.jsonl"], out=tmp_path / "o", workers=1, signals=["gopher_quality"],
                   steps=[step], mixture={"by": "lang", "method": "temperature", "tau": 1.0})
    assert found["steps"][0]["judged"] == 1  # only a is English
    kept = [json.loads(x) for x in zstandard.ZstdDecompressor().stream_reader(
        (tmp_path / "o" / "kept.jsonl.zst").read_bytes()).read().decode().splitlines()]
    meta = {d["id"]: d["meta"] for d in kept}
    assert meta["a"]["lang"] == "en" and meta["b"]["lang"] == "fr" and meta["c"]["lang"] == "fr"
    assert meta["b"]["lang_declared"] == "en" and "lang_declared" not in meta["a"]
    assert all(0.5 < m["lang_score"] <= 1.0 for m in meta.values())
    mixture = json.loads((tmp_path / "o" / "mixture.json").read_text())
    assert sorted(mixture["groups"]) == ["en", "fr"] and len(mixture["groups"]["fr"]["ids"]) == 2


def test_skip_bad_counts_rejects_as_removed(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "text": "' + PROSE + '"}\n{"id": "b", "text": \n')
    summary = curate([path], out=tmp_path / "o", workers=1, skip_bad=True, signals=["ttr"], steps=[])
    assert summary["read"] == 2 and summary["kept"] == 1
    assert summary["removed_by_step"] == {"read": {"malformed record": 1}}
    # the reject keeps its file, line, reason and text, in removed.jsonl.zst and rejects.jsonl
    import zstandard

    removed = [json.loads(x) for x in zstandard.ZstdDecompressor().stream_reader(
        (tmp_path / "o" / "removed.jsonl.zst").read_bytes()).read().decode().splitlines()]
    assert removed == [{"id": f"rejected/{path}:2", "text": '{"id": "b", "text": \n',
                        "meta": {"source": str(path), "line": 2}, "step": "read",
                        "reason": {"reason": "malformed record", "detail": removed[0]["reason"]["detail"]}}]
    assert "invalid JSON" in removed[0]["reason"]["detail"]
    row = json.loads((tmp_path / "o" / "rejects.jsonl").read_text())
    assert (row["source"], row["line"]) == (str(path), 2)


def test_sharded_outputs_hold_every_document_once_in_parts(tmp_path):
    """issue 17 item 1: --out-shard-docs writes kept, removed and rejects as folders of parts;
    together they hold every document read, in input order, and the reader takes the folders."""
    path, docs = corpus(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(f'{{"id": "b{i}", "text": \n' for i in range(5)))
    summary = curate([path, bad], out=tmp_path / "o", workers=1, skip_bad=True, signals=["ttr"],
                     steps=[{"dedup": "exact"}, {"filter": "bounds", "bounds": {"ttr": [0.5, None]}}],
                     out_shard_docs=4)
    out = tmp_path / "o"
    assert summary["read"] == len(docs) + 5
    parts = {name: sorted(p.name for p in (out / name).iterdir()) for name in ("kept", "removed", "rejects")}
    kept = [d.id for d in read_documents(out / "kept")]
    removed = [d.id for d in read_documents(out / "removed")]
    assert len(kept) == summary["kept"] and len(removed) == summary["removed"]
    assert parts["kept"] == [f"part-{k:05d}.jsonl.zst" for k in range(-(-len(kept) // 4))]
    assert parts["removed"] == [f"part-{k:05d}.jsonl.zst" for k in range(-(-len(removed) // 4))]
    assert parts["rejects"] == ["part-00000.jsonl", "part-00001.jsonl"]  # 5 rejects, 4 a part
    assert kept == [d.id for d in docs if d.id in set(kept)]  # input order
    assert sorted(kept + [r for r in removed if not r.startswith("rejected/")]) == sorted(d.id for d in docs)
    assert sum(r.startswith("rejected/") for r in removed) == 5
    manifest = json.loads((out / "llm4all.json").read_text())
    assert manifest["files"]["kept"] == "kept/" and manifest["files"]["rejects"] == "rejects/"
    assert not (out / "kept.jsonl.zst").exists()


def test_stage_manifest_records_inputs_counts_and_outputs(tmp_path):
    from llm4all.runs import read_manifest

    path, docs = corpus(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "zz", "text": "' + PROSE + '"}\n{"id": "b", "text": \n')
    summary = curate([path, bad], out=tmp_path / "o", workers=1, skip_bad=True,
                     signals=["word_entropy", "gopher_quality", "gopher_repetition"],
                     mixture={"by": "lang", "method": "proportional"})
    manifest = read_manifest(tmp_path / "o")
    assert manifest["command"] == "curate" and manifest["models"] == []
    assert manifest["inputs"] == {"data": [str(path), str(bad)]}
    m = manifest["metrics"]
    assert (m["read"], m["kept"], m["removed"], m["rejected"]) == (len(docs) + 2, summary["kept"],
                                                                  summary["removed"], 1)
    assert m["read"] == m["kept"] + m["removed"]
    assert m["removed_by_step"]["read"] == {"malformed record": 1}
    counts = ("in", "judged", "kept", "removed")
    assert m["steps"]["dedup:exact"] == {k: summary["steps"][1][k] for k in counts}
    assert m["steps"]["dedup:exact"]["removed"] == 1  # "copy"
    assert set(manifest["files"]) == {"kept", "removed", "signals", "summary", "mixture", "rejects"}
    assert all((tmp_path / "o" / f).exists() for f in manifest["files"].values())


@pytest.mark.parametrize("kwargs, message", [
    ({"signals": ["nope"]}, "unknown signals entry 'nope'"),
    ({"steps": [{"dedup": "minhash", "treshold": 0.8}]},
     "unknown option 'treshold'.*did you mean 'threshold'"),
    ({"steps": [{"dedup": "exact", "filter": "published"}]}, "exactly one of filter, dedup, select"),
    ({"steps": [{"filter": "published", "only": ["nope"]}]}, "no published threshold for 'nope'"),
    ({"steps": [{"dedup": "exact"}, {"dedup": "exact"}]}, "labels must be unique"),
    ({"curriculum": {"signal": "nope"}}, "no signal column 'nope'"),
    ({"mixture": {"by": "lang", "method": "fixed", "weights": {"en": 1}}, "steps": [], "lang_id": "meta"},
     "missing \\['fr'\\]"),
    ({"mixture": {"by": "lang", "colour": 1}, "steps": []}, "mixture: unknown key 'colour'"),
])
def test_bad_configuration_fails_without_output(tmp_path, kwargs, message):
    path, _ = corpus(tmp_path)
    with pytest.raises(UserError, match=message):
        curate([path], out=tmp_path / "out", workers=1, **{"signals": ["ttr"], **kwargs})
    assert not (tmp_path / "out").exists()


def test_curriculum_and_mixture_manifests(tmp_path):
    path, _ = corpus(tmp_path)
    curate([path], out=tmp_path / "o", workers=1, signals=["ttr", "word_entropy"], steps=[],
           curriculum={"signal": "word_entropy", "order": "easy_to_hard", "pacing": "linear"},
           mixture={"by": "lang", "method": "temperature", "tau": 100.0})
    cur = json.loads((tmp_path / "o" / "curriculum.json").read_text())
    table = {r["id"]: r["word_entropy"] for r in _signals(tmp_path / "o")}
    values = [table[i] for i in cur["ids"]]
    assert values == sorted(values) and len(values) == 32
    mix = json.loads((tmp_path / "o" / "mixture.json").read_text())
    weights = [g["weight"] for g in mix["groups"].values()]
    assert sum(weights) == pytest.approx(1) and max(weights) - min(weights) < 0.02  # tau -> inf: uniform


def test_pacing_functions():
    assert curriculum.competence(0, 100, "linear", c0=0.2) == pytest.approx(0.2)
    assert curriculum.competence(50, 100, "linear", c0=0.2) == pytest.approx(0.6)
    assert curriculum.competence(50, 100, "root", c0=0.0) == pytest.approx(np.sqrt(0.5))
    assert curriculum.competence(100, 100, "root") == 1.0
    steps = [curriculum.competence(t, 100, "step", c0=0.25, n_steps=4) for t in (0, 30, 60, 99)]
    assert steps == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_mixture_weights():
    sizes = {"en": 900.0, "fr": 100.0}
    assert mixture.weights(sizes, "proportional") == pytest.approx({"en": 0.9, "fr": 0.1})
    t2 = mixture.weights(sizes, "temperature", tau=2.0)
    assert t2["fr"] == pytest.approx(0.1**0.5 / (0.9**0.5 + 0.1**0.5))
    assert mixture.weights(sizes, "fixed", {"en": 3, "fr": 1}) == pytest.approx({"en": 0.75, "fr": 0.25})


def test_planted_documents_are_labelled_and_deterministic():
    docs = [Document(f"d{i}", PROSE + str(i), {"lang": "en"}) for i in range(100)]
    a, b = plant(docs, 0.3, seed=1), plant(docs, 0.3, seed=1)
    assert [d.to_dict() for d in a] == [d.to_dict() for d in b] and len(a) == 30
    kinds = {d.meta["planted"] for d in a}
    assert {"exact_copy", "near_copy", "boilerplate", "symbols"} <= kinds
    assert all(d.meta["of"] in {x.id for x in docs} for d in a)


def test_plant_command_writes_documents_and_a_manifest_beside_them(tmp_path):
    from llm4all.curate.planted import main as plant_main
    from llm4all.runs import read_manifest, write_manifest

    path, docs = corpus(tmp_path)
    counts = plant_main([path], out=tmp_path / "p" / "planted.jsonl.zst", fraction=0.2, seed=3)
    planted = list(read_documents(tmp_path / "p" / "planted.jsonl.zst"))
    assert len(planted) == sum(counts.values()) == int(0.2 * len(docs))
    manifest = read_manifest(tmp_path / "p")
    assert manifest["command"] == "plant" and manifest["files"] == {"documents": "planted.jsonl.zst"}
    assert manifest["metrics"] == {"read": len(docs), "planted": len(planted), "by_kind": counts}
    assert manifest["arguments"] == {"fraction": 0.2, "seed": 3}
    write_manifest(tmp_path / "c", "curate")
    with pytest.raises(UserError, match="belongs to another stage"):
        plant_main([path], out=tmp_path / "c" / "planted.jsonl.zst")
    assert read_manifest(tmp_path / "c")["command"] == "curate"
    assert not (tmp_path / "c" / "planted.jsonl.zst").exists()


def _lines(path):
    import zstandard

    raw = zstandard.ZstdDecompressor().decompress(path.read_bytes(), max_output_size=10**8)
    return raw.decode().splitlines()


def _signals(out):
    import pyarrow.parquet as pq

    return pq.read_table(out / "signals.parquet").to_pylist()
