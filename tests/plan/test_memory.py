"""Memory: ZeRO Figure 1, hand-computed components, GQA, monotonicity, verdicts."""

import pytest

from llm4all.errors import UserError
from llm4all.plan.arch import PRESETS, Arch, from_hf_config, resolve_arch
from llm4all.plan.cost import training_cost, verdict
from llm4all.plan.hardware import Hardware
from llm4all.plan.memory import Setup, breakdown, total, zero_model_states

SMOL = PRESETS["smollm2-135m"]


def test_zero_paper_figure1():
    # Rajbhandari et al. 2020, Figure 1: Ψ = 7.5B, N_d = 64, K = 12
    gb = [zero_model_states(7.5e9, 64, s) / 1e9 for s in range(4)]
    assert gb[0] == pytest.approx(120.0)
    assert gb[1] == pytest.approx(31.4, abs=0.05)
    assert gb[2] == pytest.approx(16.6, abs=0.05)
    assert gb[3] == pytest.approx(1.9, abs=0.05)


def test_breakdown_matches_zero_model_states():
    arch = PRESETS["llama-2-7b"]
    psi = arch.n_params()
    for sharding, stage in (("none", 0), ("zero1", 1), ("zero2", 2), ("zero3", 3)):
        parts = breakdown(arch, Setup(sharding=sharding, gpus=64))
        states = sum(parts[k] for k in ("weights", "gradients", "optimizer_states", "master_weights"))
        assert states == pytest.approx(zero_model_states(psi, 64, stage))


def test_published_parameter_counts():
    # model cards: SmolLM2-135M 134.5M, Llama-2-7B 6.74B, Llama-3.2-1B 1.24B, Qwen2.5-0.5B 0.49B
    assert SMOL.n_params() == 134_515_008
    assert PRESETS["llama-2-7b"].n_params() == 6_738_415_616
    assert PRESETS["llama-3.2-1b"].n_params() == 1_235_814_400
    assert PRESETS["qwen2.5-0.5b"].n_params() == 494_032_768


def test_kv_cache_uses_kv_heads():
    # 2 (K and V) · layers · kv_heads · head_dim · seq · batch · bytes
    parts = breakdown(SMOL, Setup(mode="inference", batch=2, seq=1000, dtype="bf16"))
    assert parts["kv_cache"] == 2 * 30 * 3 * 64 * 1000 * 2 * 2
    mha = Arch(576, 30, 9, 9, 1536, 49152, tied_embeddings=True)
    assert breakdown(mha, Setup(mode="inference", batch=2, seq=1000))["kv_cache"] == 3 * parts["kv_cache"]


def test_total_is_sum_not_max():
    parts = breakdown(SMOL, Setup(batch=4, seq=1024))
    assert total(parts) == pytest.approx(sum(parts.values()))
    assert total(parts) > max(parts.values())


def test_mixed_precision_adamw_is_16_bytes_per_param():
    parts = breakdown(SMOL, Setup(dtype="bf16", master_weights=True))
    states = sum(parts[k] for k in ("weights", "gradients", "optimizer_states", "master_weights"))
    assert states == 16 * SMOL.n_params()
    eight_bit = breakdown(SMOL, Setup(optimizer="adamw8bit"))["optimizer_states"]
    assert eight_bit < parts["optimizer_states"] / 3.9


def test_korthikanti_gpt_layer_order_of_magnitude():
    # a GPT-3-like layer, 16-bit, no recomputation: Korthikanti's s·b·h·(34 + 5·a·s/h) bytes.
    # Our llama accounting with a GELU MLP of width 4h and math attention lands within 25%.
    from llm4all.plan.memory import activation_bytes_per_layer

    arch = Arch(12288, 1, 96, 96, 4 * 12288, 51200, mlp="gelu")
    s, b, h, a = 2048, 1, 12288, 96
    ours = activation_bytes_per_layer(arch, s, b, 2, "none", "math")
    theirs = s * b * h * (34 + 5 * a * s / h)
    assert ours == pytest.approx(theirs, rel=0.25)
    sel = activation_bytes_per_layer(arch, s, b, 2, "selective", "math")
    assert sel == pytest.approx(s * b * h * 34, rel=0.25)


def test_memory_monotone_in_batch_and_seq():
    for recompute in ("none", "selective", "full"):
        prev = 0.0
        for batch in (1, 2, 4, 8):
            t = total(breakdown(SMOL, Setup(batch=batch, seq=512, recompute=recompute)))
            assert t > prev
            prev = t
        prev = 0.0
        for seq in (128, 256, 1024, 4096):
            t = total(breakdown(SMOL, Setup(batch=2, seq=seq, recompute=recompute, attention="math")))
            assert t > prev
            prev = t


def test_recomputation_and_lora_reduce_memory():
    base = total(breakdown(SMOL, Setup(batch=4, seq=2048)))
    full = total(breakdown(SMOL, Setup(batch=4, seq=2048, recompute="full")))
    assert full < base
    arch = PRESETS["llama-2-7b"]
    ft = total(breakdown(arch, Setup(batch=1, seq=512)))
    lora = total(breakdown(arch, Setup(batch=1, seq=512, lora_rank=16)))
    qlora = total(breakdown(arch, Setup(batch=1, seq=512, lora_rank=16, base_dtype="int4")))
    assert qlora < lora < ft
    # QLoRA 7B base: ~0.5 bytes/param for the quantised layers
    weights = breakdown(arch, Setup(lora_rank=16, base_dtype="int4"))["weights"]
    assert weights / 1e9 == pytest.approx(4.0, rel=0.15)


def test_verdict_and_fixes():
    gpu = Hardware(flops=1e14, memory_gib=24, price_per_hour=1.0)
    v = verdict(SMOL, Setup(batch=8, seq=2048), gpu)
    assert not v["fits"] and v["fixes"]
    for fix in v["fixes"]:
        assert fix["total_bytes"] <= gpu.usable_bytes
        assert fix["total_bytes"] == pytest.approx(total(breakdown(SMOL, fix["setup"])))
    assert v["fixes"][0]["change"].startswith("micro-batch")
    big = verdict(PRESETS["llama-2-7b"], Setup(batch=8, seq=2048), gpu)
    assert big["fixes"] and " + " in big["fixes"][0]["change"]
    assert verdict(SMOL, Setup(batch=1, seq=256), gpu)["fits"]


def test_training_cost_hand_value():
    gpu = Hardware(flops=1e15, memory_gib=80, price_per_hour=2.0)
    c = training_cost(3.6e18, gpu, mfu=0.5, gpus=2)
    assert c["gpu_hours"] == pytest.approx(2.0)
    assert c["wall_hours"] == pytest.approx(1.0)
    assert c["dollars"] == pytest.approx(4.0)
    assert c["pf_days"] == pytest.approx(3.6e18 / 8.64e19)


def test_arch_sources(tmp_path):
    cfg = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
           "tie_word_embeddings": True, "max_position_embeddings": 8192}
    assert from_hf_config(cfg).n_params() == SMOL.n_params()
    (tmp_path / "config.json").write_text(__import__("json").dumps(cfg))
    assert resolve_arch(str(tmp_path)).n_params() == SMOL.n_params()
    assert resolve_arch("", hidden=64, layers=2, heads=4, intermediate=128, vocab=100).kv_heads == 4


def test_gguf_arch(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "m.gguf"
    w = GGUFWriter(str(path), "llama")
    for key, val in (("embedding_length", 64), ("block_count", 2), ("feed_forward_length", 128),
                     ("attention.head_count", 4), ("attention.head_count_kv", 2),
                     ("context_length", 256), ("vocab_size", 100)):
        w.add_uint32(f"llama.{key}", val)
    w.add_tensor("token_embd.weight", np.zeros((100, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    arch = resolve_arch(str(path))
    assert (arch.hidden, arch.layers, arch.heads, arch.kv_heads, arch.vocab) == (64, 2, 4, 2, 100)
    assert arch.tied_embeddings


@pytest.mark.parametrize("kw,match", [
    (dict(dtype="fp8"), "dtype"), (dict(optimizer="adam"), "adamw"), (dict(batch=0), "batch"),
    (dict(sharding="zero4"), "sharding"), (dict(dtype="int4"), "lora-rank"),
])
def test_bad_setup(kw, match):
    with pytest.raises(UserError, match=match):
        Setup(**kw)


def test_bad_arch():
    with pytest.raises(UserError, match="kv_heads"):
        Arch(64, 2, 4, 3, 128, 100)
    with pytest.raises(UserError, match="preset"):
        resolve_arch("smollm-135m")
    with pytest.raises(UserError, match="missing: --layers"):
        resolve_arch("", hidden=64, heads=4, intermediate=128, vocab=100)
    with pytest.raises(UserError, match=r"--layers 0: model dimensions must be positive"):
        resolve_arch("", hidden=64, layers=0, heads=4, intermediate=128, vocab=100)
    with pytest.raises(UserError, match=r"--hidden -8: model dimensions must be positive"):
        resolve_arch("smollm2-135m", hidden=-8)
    assert resolve_arch("", hidden=64, layers=2, heads=4, intermediate=128, vocab=100).kv_heads == 4


def test_plan_memory_layers_zero_says_so(capsys):
    from llm4all.cli import main

    assert main(["plan", "memory", "--hidden", "64", "--layers", "0", "--heads", "4", "--intermediate",
                 "128", "--vocab", "100"]) == 2
    assert "--layers 0: model dimensions must be positive" in capsys.readouterr().err


def test_the_planner_names_only_optimizers_train_accepts():
    """plan suggested 'adamw-8bit' where train knows 'adamw8bit' (issue 16 item 4)."""
    import typing

    from llm4all.plan.commands import memory
    from llm4all.plan.memory import OPTIMIZER_STATE_BYTES
    from llm4all.train.optim import OPTIMIZERS

    offered = set(typing.get_args(typing.get_type_hints(memory)["optimizer"]))
    assert offered == set(OPTIMIZER_STATE_BYTES) and offered <= set(OPTIMIZERS.names())


def test_every_fix_the_planner_suggests_is_a_train_option():
    """issue 16: `plan` names only what `train` runs (it once suggested `adamw-8bit`)."""
    import re
    import shlex

    from llm4all.cli import COMMANDS, _command_parser, resolve
    from llm4all.plan.cost import _fixes

    parser = _command_parser("llm4all train", resolve(COMMANDS["train"]))
    names = [name for setup in (Setup(batch=4, attention="math"), Setup(batch=4, optimizer="lion"))
             for name, _, _ in _fixes(setup)]
    assert any("--lora-base int4" in n for n in names) and any("adamw8bit" in n for n in names)
    checked = 0
    for name in names:
        options = re.search(r"\(([^()]*)\)$", name.format(batch=2, accum=4, gpus=8)).group(1)
        options = options.split("... ")[-1]  # after torchrun's own arguments
        if options.startswith("--"):
            args = parser.parse_args(["shards", "--out", "run", *shlex.split(options)])
            assert args.out == "run" or str(args.out) == "run"
            checked += 1
    assert checked == len(names) - 1  # all but SDPA attention, which train always uses
