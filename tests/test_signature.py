"""Option groups (dataclasses) in command signatures: flags, recipe keys, help, validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from llm4all.cli import COMMANDS, main, resolve
from llm4all.distill.args import KDConfig
from llm4all.errors import UserError
from llm4all.recipe import load_recipe
from llm4all.signature import bind, field_docs, flat_arguments, pack_configs, params
from llm4all.train.args import TrainingConfig

SURFACE = Path(__file__).with_name("cli_surface.json")  # every command's options before issue #13


def commands(table=COMMANDS, prefix=()):
    for name, target in table.items():
        if isinstance(target, dict):
            yield from commands(target, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), target


def test_no_flag_or_recipe_key_of_before_the_restructuring_is_gone():
    before = json.loads(SURFACE.read_text())
    now = {name: set(params(resolve(target))) for name, target in commands()}
    gone = {name: sorted(set(keys) - now.get(name, set())) for name, keys in before.items()}
    assert {k: v for k, v in gone.items() if v} == {}


@pytest.mark.parametrize("command", ["train", "distill"])
def test_every_training_option_is_a_flag_of_both_commands(command):
    options = params(resolve(COMMANDS[command]))
    for f in dataclasses.fields(TrainingConfig):
        assert f.name in options, f.name
        assert options[f.name][0].default == getattr(TrainingConfig(), f.name)


def test_every_config_field_has_a_doc_line():
    for cls in (TrainingConfig, KDConfig):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert missing == [], f"{cls.__name__}: {missing}"


def test_help_shows_the_field_docs(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--grad-clip GRAD_CLIP maximum global gradient norm (0 disables clipping)" in text
    assert "--kd-options KD_OPTIONS options of the divergence" in text


def test_flat_values_are_packed_validated_and_flattened_back():
    fn = resolve(COMMANDS["distill"])
    config = {"data": "shards", "out": "o", "lr": "3e-4", "alpha": 1, "mode": "online"}
    kwargs = bind(fn, config, "recipe: stages.d")
    packed = pack_configs(fn, kwargs)
    assert packed["training"].lr == 3e-4 and packed["kd"].mode == "online" and packed["kd"].alpha == 1.0
    flat = flat_arguments(packed)
    assert flat["lr"] == 3e-4 and flat["alpha"] == 1.0 and "training" not in flat and "kd" not in flat


@pytest.mark.parametrize("config, message", [
    ({"lr": -1}, "stages.d: --lr must be a positive number, got -1.0"),
    ({"kd_options": {"beta": 0.5}}, "stages.d: kd loss 'forward_kl': unknown option 'beta'"),
    ({"grad_clp": 1}, "stages.d: unknown key 'grad_clp'.*did you mean 'grad_clip'"),
    ({"mode": "sequence", "prompt_tokens": 512, "seq_len": 256}, "stages.d: --prompt-tokens must be in"),
])
def test_recipe_validation_names_the_stage_and_the_option(config, message):
    with pytest.raises(UserError, match=message):
        bind(resolve(COMMANDS["distill"]), {"data": "x", "out": "o", **config}, "recipe: stages.d")


def test_a_recipe_stage_with_a_bad_training_value_fails_at_load(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  tokenize:\n    data: [x]\n  distill:\n    data: ${tokenize}\n"
                      "    keep_last: 0\n")
    with pytest.raises(UserError, match=r"r.yaml: stages.distill: --keep-last must be an integer ≥ 1"):
        load_recipe(recipe, tmp_path / "run")


def test_malformed_yaml_on_the_command_line_is_one_line(capsys):
    from llm4all.cli import main

    with pytest.raises(SystemExit) as exit_:  # argparse: usage, then one error line
        main(["compress", "smollm2-135m", "--out", "/tmp/never-written", "--method", "{name: gptq, bits: 4"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "error: argument --method: not valid YAML at column" in err.splitlines()[-1]


def test_a_continuation_line_that_looks_like_an_argument_continues_the_one_before():
    from llm4all.signature import doc_args

    def fn(address: str = "", port: int = 0):
        """Join a cluster.

        Args:
            address: the head to join, given as
                HOST:PORT of its head, e.g. 10.0.0.5:6379.
            port: the local port.
        """

    assert doc_args(fn) == {
        "address": "the head to join, given as HOST:PORT of its head, e.g. 10.0.0.5:6379.",
        "port": "the local port."}
