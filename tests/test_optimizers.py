"""Each optimizer's step against a reference computed here from its paper (issue 16 item 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm4all.train.optim import build_optimizer


class Net(torch.nn.Module):
    """One matrix (decayed) and one vector (not decayed): both kinds of parameter group."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))


def grads(step: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(step)
    return rng.normal(size=(4, 3)), rng.normal(size=3)


def run(name: str, steps: int, lr: float, weight_decay: float, betas=(0.9, 0.99)) -> tuple[np.ndarray, ...]:
    net = Net()
    opt = build_optimizer(name, net, lr=lr, weight_decay=weight_decay, betas=betas)
    for t in range(steps):
        gw, gb = grads(t)
        net.w.grad, net.b.grad = torch.from_numpy(gw), torch.from_numpy(gb)
        opt.step()
    return net.w.detach().numpy(), net.b.detach().numpy()


def start() -> tuple[np.ndarray, np.ndarray]:
    net = Net()
    return net.w.detach().numpy().copy(), net.b.detach().numpy().copy()


def test_lion_is_algorithm_2_of_chen_et_al():
    """x ← x·(1 − lr·λ) − lr·sign(β1·m + (1 − β1)·g);  m ← β2·m + (1 − β2)·g."""
    lr, wd, (b1, b2) = 0.01, 0.1, (0.9, 0.99)
    (w, b), m = start(), [np.zeros((4, 3)), np.zeros(3)]
    for t in range(5):
        out = []
        for i, (x, g, decay) in enumerate(zip((w, b), grads(t), (wd, 0.0), strict=True)):
            x = x * (1 - lr * decay) - lr * np.sign(b1 * m[i] + (1 - b1) * g)
            m[i] = b2 * m[i] + (1 - b2) * g
            out.append(x)
        w, b = out
    got_w, got_b = run("lion", 5, lr, wd, (b1, b2))
    np.testing.assert_allclose(got_w, w, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_b, b, rtol=0, atol=1e-12)


def test_adafactor_is_algorithm_4_of_shazeer_and_stern():
    """Factored second moment of a matrix (row and column means of g², their outer product over the
    row mean), a full one of a vector; β2_t = 1 − t^−0.8, step ρ_t = min(lr, 1/√t) times
    max(ε2, RMS(x)); the update clipped to RMS ≤ d = 1; no first moment."""
    lr, wd, eps1, eps2 = 0.01, 0.1, np.finfo(np.float64).eps, 1e-3
    (w, b) = start()
    r, c, v = np.zeros((4, 1)), np.zeros((1, 3)), np.zeros(3)
    for t in range(1, 6):
        gw, gb = grads(t - 1)
        one_minus_beta2 = t ** -0.8
        rho = min(lr, 1 / np.sqrt(t))
        alpha_w = max(eps2, np.sqrt(np.mean(w ** 2))) * rho
        alpha_b = max(eps2, np.sqrt(np.mean(b ** 2))) * rho
        w = w * (1 - lr * wd)
        r += one_minus_beta2 * ((gw ** 2).mean(axis=1, keepdims=True) - r)
        c += one_minus_beta2 * ((gw ** 2).mean(axis=0, keepdims=True) - c)
        v_hat = r @ c / max(r.mean(), eps1)
        u = gw / np.sqrt(np.maximum(v_hat, eps1 ** 2))
        w = w - alpha_w * u / max(1.0, np.sqrt(np.mean(u ** 2)))
        v += one_minus_beta2 * (gb ** 2 - v)
        u = gb / np.sqrt(np.maximum(v, eps1 ** 2))
        b = b - alpha_b * u / max(1.0, np.sqrt(np.mean(u ** 2)))
    got_w, got_b = run("adafactor", 5, lr, wd)
    np.testing.assert_allclose(got_w, w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_b, b, rtol=1e-10, atol=1e-12)


def test_eight_bit_adamw_tracks_fp32_adamw():
    """bitsandbytes' block-wise 8-bit AdamW (Dettmers et al. 2022) on its CPU backend: after 100
    steps of a least-squares fit at lr 1e-3, the weights are within 10% (relative L2) of fp32
    AdamW's and the loss within 2% of it (the stated tolerance; measured 5.5% and 0.5%)."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is part of `make install` (extra dev)")
    g = torch.Generator().manual_seed(0)
    X, true = torch.randn(256, 512, generator=g), torch.randn(512, 64, generator=g)
    Y = X @ true

    def fit(name):
        lin = torch.nn.Linear(512, 64, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.zeros(64, 512))
        opt = build_optimizer(name, lin, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95))
        for _ in range(100):
            opt.zero_grad()
            loss = ((lin(X) - Y) ** 2).mean()
            loss.backward()
            opt.step()
        return lin.weight.detach(), ((lin(X) - Y) ** 2).mean().item()

    (w32, loss32), (w8, loss8) = fit("adamw"), fit("adamw8bit")
    assert (w8 - w32).norm() / w32.norm() < 0.10
    assert abs(loss8 - loss32) <= 0.02 * loss32
    assert loss8 < 0.8 * (Y ** 2).mean().item()  # it did learn (the loss at zero weights)
