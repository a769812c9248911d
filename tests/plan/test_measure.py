"""--measure: a real subprocess run (slow: imports torch + transformers in a child)."""

import pytest

from llm4all.errors import UserError
from llm4all.plan.arch import Arch
from llm4all.plan.measure import measure
from llm4all.plan.memory import Setup, breakdown, total

ARCH = Arch(256, 2, 4, 2, 512, 4096, tied_embeddings=True)


@pytest.mark.slow
def test_measure_training_peak_is_plausible():
    setup = Setup(dtype="fp32", batch=2, seq=128)
    m = measure(ARCH, setup, steps=2)
    parts = breakdown(ARCH, setup)
    states = parts["weights"] + parts["gradients"] + parts["optimizer_states"]
    # the peak must hold at least the model states, and not wildly more than the prediction
    assert m["peak_bytes"] >= 0.9 * states
    assert m["peak_bytes"] <= 3 * total(parts)
    assert m["tokens_per_s"] > 0


def test_measure_rejects_unsupported_before_running():
    with pytest.raises(UserError, match="LoRA"):
        measure(ARCH, Setup(lora_rank=8))
    with pytest.raises(UserError, match="adamw8bit"):
        measure(ARCH, Setup(optimizer="adamw8bit"))
