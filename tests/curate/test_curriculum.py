"""Curricula: the pacing registry (invariants of every entry, hand-checked values), recipe
validation through the registry before any work, the manifest the sampler reads back."""

import numpy as np
import pytest

from llm4all.catalog import CURRICULA
from llm4all.curate import curriculum
from llm4all.curate.pipeline import main as curate
from llm4all.errors import UserError


def test_registry_lists_the_pacing_functions_with_their_sources():
    assert CURRICULA.names() == ["linear", "root", "step"]
    lines = dict(CURRICULA.describe())
    assert "Platanios et al. 2019" in lines["linear"] and "Platanios et al. 2019" in lines["root"]
    assert "Bengio et al. 2009" in lines["step"]


@pytest.mark.parametrize("name", ["linear", "root", "step"])
@pytest.mark.parametrize("c0", [0.0, 0.1, 0.5, 1.0])
def test_every_pacing_starts_at_c0_ends_at_1_and_never_falls(name, c0):
    pace = CURRICULA.build({"name": name, "c0": c0})
    x = np.linspace(0, 1, 201)
    c = np.array([pace(v) for v in x])
    assert c[0] == pytest.approx(c0) and c[-1] == pytest.approx(1.0)
    assert (np.diff(c) >= -1e-12).all() and (c >= c0 - 1e-12).all() and (c <= 1.0).all()


def test_pacing_values_by_hand():
    assert CURRICULA.build({"name": "root", "c0": 0.2})(0.5) == pytest.approx(np.sqrt(0.04 + 0.96 * 0.5))
    assert CURRICULA.build({"name": "linear", "c0": 0.2})(0.25) == pytest.approx(0.4)
    stairs = CURRICULA.build({"name": "step", "c0": 0.1, "n_steps": 3})
    assert [stairs(x) for x in (0.0, 0.33, 0.34, 0.66, 0.67, 1.0)] == pytest.approx(
        [0.1, 0.1, 0.55, 0.55, 1.0, 1.0])
    assert CURRICULA.build({"name": "step", "n_steps": 1})(0.0) == 1.0


@pytest.mark.parametrize(("spec", "match"), [
    ({"signal": "ttr", "pacing": "sqrt"}, r"unknown pacing 'sqrt'; valid: linear, root, step"),
    ({"signal": "ttr", "pacing": "root", "n_steps": 4},
     r"unknown key 'n_steps' \(pacing 'root'\); valid: c0, higher_is_harder, order, pacing, signal"),
    ({"signal": "ttr", "colour": 1}, r"unknown key 'colour'"),
    ({"signal": "ttr", "pacing": "step", "c00": 0.1}, r"unknown key 'c00'.*did you mean 'c0'"),
    ({"pacing": "root"}, r"needs signal: NAME"),
    ({"signal": "ttr", "order": "random"}, r"order must be easy_to_hard or hard_to_easy"),
    ({"signal": "ttr", "higher_is_harder": "yes"}, r"higher_is_harder must be true or false"),
    ({"signal": "ttr", "c0": 1.5}, r"c0 \(initial competence\) must be in \[0, 1\]"),
    ({"signal": "ttr", "pacing": "step", "n_steps": 0}, r"n_steps must be an integer >= 1"),
])
def test_bad_specs_are_user_errors_naming_the_key(spec, match):
    with pytest.raises(UserError, match=match):
        curriculum.parse(spec)


def test_manifest_records_the_entry_options_and_the_sampler_reads_them_back():
    ids = ["a", "b", "c", "d"]
    table = {"ttr": np.array([0.3, 0.1, 0.4, 0.2])}
    spec = curriculum.parse({"signal": "ttr", "pacing": "step", "n_steps": 3, "c0": 0.25})
    out = curriculum.manifest(spec, ids, table)
    assert out["pacing"] == {"name": "step", "c0": 0.25, "n_steps": 3}
    assert out["ids"] == ["b", "d", "a", "c"]
    assert curriculum.parse({"signal": "ttr"}).options == {"c0": 0.1}  # root's default, nothing else
    reverse = curriculum.parse({"signal": "ttr", "order": "hard_to_easy", "pacing": "linear"})
    assert curriculum.manifest(reverse, ids, table)["ids"] == ["c", "a", "d", "b"]
    easier_high = curriculum.parse({"signal": "ttr", "higher_is_harder": False})
    assert curriculum.manifest(easier_high, ids, table)["ids"] == ["c", "a", "d", "b"]
    pacing = out["pacing"]  # what train/sampler.py passes to competence
    for t in range(0, 101, 5):
        direct = CURRICULA.build({"name": "step", "c0": 0.25, "n_steps": 3})(t / 100)
        assert curriculum.competence(t, 100, pacing["name"], pacing["c0"], pacing.get("n_steps", 4)) == direct
    assert curriculum.competence(50, 100, "root", 0.1, 4) == CURRICULA.build("root")(0.5)


def test_a_bad_curriculum_fails_before_the_data_is_read(tmp_path):
    with pytest.raises(UserError, match=r"curriculum: unknown key 'pace'"):
        curate([tmp_path / "does-not-exist.jsonl"], out=tmp_path / "out", signals=["ttr"],
               curriculum={"signal": "ttr", "pace": "root"})
    assert not (tmp_path / "out").exists()
