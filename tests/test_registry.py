import pytest

from llm4all.errors import UserError
from llm4all.registry import REGISTRIES, Registry, check_options


def make_registry(kind="test_things"):
    REGISTRIES.pop(kind, None)
    return Registry(kind)


def test_register_get_build_and_describe():
    reg = make_registry()

    @reg.register("double")
    def double(x: int = 1, scale: int = 2):
        """Multiply by a scale (Smith 2020)."""
        return x * scale

    assert reg.names() == ["double"]
    assert reg.get("double") is double
    assert reg.build({"name": "double", "x": 3}) == 6
    assert reg.build("double") == 2
    assert reg.describe() == [("double", "Multiply by a scale (Smith 2020).")]


def test_duplicate_name_is_rejected():
    reg = make_registry()
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(lambda: 2)


def test_unknown_name_suggests_the_closest():
    reg = make_registry()
    reg.register("gptq")(lambda: 1)
    with pytest.raises(UserError, match=r"unknown test_things entry 'gptg'.*did you mean 'gptq'"):
        reg.get("gptg")


def test_unknown_option_is_rejected_before_work():
    calls = []

    def entry(bits: int = 4):
        calls.append(bits)

    with pytest.raises(UserError, match=r"unknown option 'bitz'.*did you mean 'bits'"):
        check_options(entry, {"bitz": 3}, where="quantizers 'x'")
    reg = make_registry()
    reg.register("x")(entry)
    with pytest.raises(UserError, match="unknown option 'group'"):
        reg.build({"name": "x", "group": 3})
    assert calls == []


def test_every_catalog_registry_loads_and_has_documented_entries():
    from llm4all import catalog  # noqa: F401

    for kind in ("models", "signals", "dedupers", "scaling_laws", "hardware", "curricula", "mixtures"):
        entries = REGISTRIES[kind].describe()
        assert entries, kind
        for name, line in entries:
            assert line, f"{kind} entry {name!r} has no docstring"
