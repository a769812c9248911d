"""Greedy, temperature, top-k and top-p on hand-made distributions; seeded draws."""

from __future__ import annotations

import math

import pytest
import torch

from llm4all.errors import UserError
from llm4all.serve.sampling import Sampling, distribution, new_generator, sample, top_k_filter, top_p_filter

# probabilities 0.5, 0.2, 0.15, 0.1, 0.05 in a shuffled order (token 3 is the most likely)
PROBS = torch.tensor([0.15, 0.05, 0.2, 0.5, 0.1])
LOGITS = PROBS.log()


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


def test_top_k_keeps_the_k_most_likely_and_ties():
    assert kept(top_k_filter(LOGITS, 2)) == {3, 2}
    assert kept(top_k_filter(LOGITS, 3)) == {3, 2, 0}
    assert kept(top_k_filter(LOGITS, 0)) == set(range(5))  # 0: no limit
    tied = torch.tensor([1.0, 2.0, 2.0, 0.5])
    assert kept(top_k_filter(tied, 2)) == {1, 2}
    assert kept(top_k_filter(torch.tensor([3.0, 1.0, 1.0, 0.0]), 2)) == {0, 1, 2}  # a tie at the k-th


@pytest.mark.parametrize("p, nucleus", [
    (0.5, {3}),           # 0.5 reaches 0.5
    (0.51, {3, 2}),       # 0.5 < 0.51 <= 0.7: the token crossing p is kept
    (0.7, {3, 2}),
    (0.71, {3, 2, 0}),    # 0.85
    (0.9, {3, 2, 0, 4}),  # 0.95
    (0.01, {3}),          # the most likely token is always kept
    (1.0, {0, 1, 2, 3, 4}),
])
def test_top_p_is_the_smallest_set_reaching_p(p, nucleus):
    assert kept(top_p_filter(LOGITS, p)) == nucleus


def test_filtered_distribution_is_renormalised():
    probs = distribution(LOGITS, Sampling(temperature=1.0, top_p=0.71))
    expected = {3: 0.5 / 0.85, 2: 0.2 / 0.85, 0: 0.15 / 0.85}
    for token in range(5):
        assert probs[token].item() == pytest.approx(expected.get(token, 0.0), abs=1e-6)
    probs = distribution(LOGITS, Sampling(temperature=1.0, top_k=2))
    assert probs.tolist() == pytest.approx([0, 0, 0.2 / 0.7, 0.5 / 0.7, 0], abs=1e-6)


def test_temperature_scales_the_logits_before_filtering():
    probs = distribution(LOGITS, Sampling(temperature=2.0))
    flat = PROBS.sqrt() / PROBS.sqrt().sum()  # p^(1/T), renormalised
    assert torch.allclose(probs, flat, atol=1e-6)
    # at T=2 the top two hold 0.555 of the mass, so top-p 0.6 needs a third token (at T=1: two)
    assert kept(top_p_filter(LOGITS / 2.0, 0.6)) == {3, 2, 0}
    assert kept(top_p_filter(LOGITS, 0.6)) == {3, 2}


def test_greedy_is_argmax_and_needs_no_generator():
    assert Sampling().greedy
    assert sample(LOGITS, Sampling(), None) == 3
    assert distribution(LOGITS, Sampling(top_k=2, top_p=0.1)).tolist() == [0, 0, 0, 1, 0]


def test_draws_follow_the_distribution_and_the_seed():
    sampling = Sampling(temperature=1.0, top_k=3, seed=7)
    generator = new_generator(sampling)
    draws = [sample(LOGITS, sampling, generator) for _ in range(4000)]
    assert set(draws) == {3, 2, 0}
    for token, p in {3: 0.5 / 0.85, 2: 0.2 / 0.85, 0: 0.15 / 0.85}.items():
        # binomial standard deviation of a frequency over 4000 draws is <= 0.008
        assert draws.count(token) / 4000 == pytest.approx(p, abs=0.03)
    again = new_generator(sampling)
    assert [sample(LOGITS, sampling, again) for _ in range(4000)] == draws
    other = Sampling(temperature=1.0, top_k=3, seed=8)
    other_generator = new_generator(other)
    assert [sample(LOGITS, other, other_generator) for _ in range(200)] != draws[:200]


@pytest.mark.parametrize("kwargs, flag", [({"temperature": -1}, "--temperature"),
                                          ({"top_k": -2}, "--top-k"), ({"top_p": 0}, "--top-p"),
                                          ({"top_p": 1.5}, "--top-p")])
def test_invalid_settings_name_the_flag(kwargs, flag):
    with pytest.raises(UserError, match=flag):
        Sampling(**kwargs)


def test_filters_keep_at_least_one_token_with_extreme_logits():
    logits = torch.tensor([0.0, 1000.0, -1000.0])
    assert kept(top_p_filter(logits, 0.999)) == {1}
    assert math.isclose(distribution(logits, Sampling(temperature=0.5, top_p=0.9))[1].item(), 1.0)
