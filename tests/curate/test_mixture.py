"""Mixtures: the weighting registry (hand-checked weights, temperature limits), recipe
validation through the registry before any work, the manifest the sampler reads."""

import pytest

from llm4all.catalog import MIXTURES
from llm4all.curate import mixture
from llm4all.curate.pipeline import main as curate
from llm4all.errors import UserError

SIZES = {"en": 700.0, "fr": 200.0, "de": 100.0}


def test_registry_lists_the_methods_with_their_sources():
    assert MIXTURES.names() == ["fixed", "proportional", "temperature"]
    lines = dict(MIXTURES.describe())
    assert "Arivazhagan et al. 2019" in lines["temperature"] and "mT5" in lines["temperature"]
    assert "Raffel et al. 2020" in lines["proportional"]
    assert "Gao et al. 2020" in lines["fixed"]


def test_weights_by_hand_and_temperature_limits():
    assert MIXTURES.build("proportional")(SIZES) == pytest.approx({"en": 0.7, "fr": 0.2, "de": 0.1})
    assert MIXTURES.build({"name": "temperature", "tau": 1})(SIZES) == pytest.approx(
        MIXTURES.build("proportional")(SIZES))
    hot = MIXTURES.build({"name": "temperature", "tau": 1e6})(SIZES)
    assert max(hot.values()) - min(hot.values()) < 1e-5  # τ → ∞: uniform
    t5 = MIXTURES.build({"name": "temperature", "tau": 5})(SIZES)  # Arivazhagan et al.'s T = 5
    z = sum(p ** 0.2 for p in (0.7, 0.2, 0.1))
    assert t5 == pytest.approx({"en": 0.7**0.2 / z, "fr": 0.2**0.2 / z, "de": 0.1**0.2 / z})
    assert t5["de"] > 0.1 and t5["en"] < 0.7  # small groups up-sampled
    fixed = MIXTURES.build({"name": "fixed", "weights": {"en": 2, "fr": 1, "de": 1}})(SIZES)
    assert fixed == pytest.approx({"en": 0.5, "fr": 0.25, "de": 0.25})
    with pytest.raises(UserError, match=r"missing \['fr'\], unknown \['it'\]"):
        MIXTURES.build({"name": "fixed", "weights": {"en": 1, "de": 1, "it": 1}})(SIZES)


@pytest.mark.parametrize(("spec", "match"), [
    ({"method": "temprature"}, r"unknown method 'temprature'.*did you mean 'temperature'"),
    ({"method": "fixed", "weights": {"en": 1}, "tau": 2.0},
     r"unknown key 'tau' \(method 'fixed'\); valid: by, method, weights"),
    ({"method": "proportional", "tau": 2.0},
     r"unknown key 'tau' \(method 'proportional'\); valid: by, method"),
    ({"by": "lang", "colour": 1}, r"mixture: unknown key 'colour'"),
    ({"method": "fixed"}, r"method 'fixed' needs weights"),
    ({"method": "fixed", "weights": {"en": -1, "fr": 2}}, r"non-negative with a positive sum"),
    ({"method": "temperature", "tau": 0}, r"tau must be positive"),
])
def test_bad_specs_are_user_errors_naming_the_key(spec, match):
    with pytest.raises(UserError, match=match):
        mixture.parse(spec)


def test_manifest_groups_documents_and_records_the_method_options():
    spec = mixture.parse({"by": "src", "method": "temperature", "tau": 2.0})
    assert spec.options == {"tau": 2.0}
    out = mixture.manifest(spec, ["a", "b", "c"], [{"src": "x"}, {"src": "y"}, {"src": "x"}], [30, 60, 10])
    assert out["method"] == "temperature" and out["tau"] == 2.0 and out["by"] == "src"
    assert out["groups"]["x"]["ids"] == ["a", "c"] and out["groups"]["x"]["chars"] == 40.0
    assert out["groups"]["y"]["natural_weight"] == pytest.approx(0.6)
    z = 0.4**0.5 + 0.6**0.5
    assert out["groups"]["x"]["weight"] == pytest.approx(0.4**0.5 / z)
    with pytest.raises(UserError, match="document 'b' has no meta field 'src'"):
        mixture.manifest(spec, ["a", "b"], [{"src": "x"}, {}], [1, 1])


def test_a_bad_mixture_fails_before_the_data_is_read(tmp_path):
    with pytest.raises(UserError, match=r"mixture: unknown method 'uniform'"):
        curate([tmp_path / "does-not-exist.jsonl"], out=tmp_path / "out", signals=["ttr"],
               mixture={"by": "lang", "method": "uniform"})
    assert not (tmp_path / "out").exists()
