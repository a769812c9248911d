"""Scaling laws: Kaplan et al. 2020 and Chinchilla (Hoffmann et al. 2022), pure numpy.

Units: N parameters, D tokens, C FLOPs (C ≈ 6·N·D), L in nats per token.

Chinchilla's parametric law L(N, D) = E + A/N^α + B/D^β has a closed-form compute-optimal
allocation along C = 6·N·D (Hoffmann et al. 2022, Eq. 4 and Appendix D.2):
    N*(C) = G·(C/6)^a,  D*(C) = G⁻¹·(C/6)^b,  G = (αA / βB)^(1/(α+β)),  a = β/(α+β), b = α/(α+β).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llm4all.catalog import CHINCHILLA_CONSTANTS

PF_DAY = 1e15 * 86400  # FLOPs in one petaflop/s-day (Kaplan et al. 2020, Section 1.3)


@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, Eq. 2)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n, d):
        """Predicted loss (nats/token) for N parameters trained on D tokens."""
        n, d = np.asarray(n, float), np.asarray(d, float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    @property
    def a(self) -> float:  # N* ∝ C^a
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:  # D* ∝ C^b
        return self.alpha / (self.alpha + self.beta)

    def optimal(self, flops):
        """(N*, D*) minimising L along C = 6·N·D (closed form, Hoffmann et al. App. D.2)."""
        c6 = np.asarray(flops, float) / 6
        return self.G * c6**self.a, c6**self.b / self.G

    def optimal_tokens_for(self, n):
        """D such that (N, D) is compute-optimal: invert N = G·(C/6)^a."""
        c6 = (np.asarray(n, float) / self.G) ** (1 / self.a)
        return c6 / np.asarray(n, float)

    def tokens_for_loss(self, n, loss):
        """D reaching ``loss`` with N parameters (inf where N alone cannot reach it)."""
        rest = loss - self.E - self.A / np.asarray(n, float) ** self.alpha
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(rest > 0, (self.B / np.where(rest > 0, rest, 1)) ** (1 / self.beta), np.inf)


@CHINCHILLA_CONSTANTS.register("chinchilla")
def chinchilla() -> ChinchillaLaw:
    """Hoffmann et al. 2022 Approach 3 as printed (Eq. 10): E=1.69 A=406.4 B=410.7 α=0.34 β=0.28."""
    return ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


@CHINCHILLA_CONSTANTS.register("chinchilla-unrounded")
def chinchilla_unrounded() -> ChinchillaLaw:
    """Hoffmann et al. 2022 Approach 3 with unrounded exponents α=0.3392 β=0.2849 (TeX source).

    The unrounded exponents are the ones Besiroglu et al. 2024 (Section 2) report finding in the
    paper's TeX source; we could not check that source here. They are consistent with the
    paper's own Table 2 allocation exponents for Approach 3 (a = 0.46, b = 0.54), which the
    rounded α=0.34, β=0.28 are not (they give a = 0.45).
    """
    return ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.3392, beta=0.2849)


@CHINCHILLA_CONSTANTS.register("besiroglu")
def besiroglu() -> ChinchillaLaw:
    """Besiroglu et al. 2024 refit of Chinchilla's data: E=1.82 A=482.01 B=2085.43 α=0.3478 β=0.3658."""
    return ChinchillaLaw(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)


@CHINCHILLA_CONSTANTS.register("sardana")
def sardana() -> ChinchillaLaw:
    """Chinchilla law with α=0.336 β=0.283, as we infer Sardana et al. 2023 used (see docstring).

    With these exponents (E, A, B as in Chinchilla) our inference-aware optimiser reproduces
    Sardana et al.'s Figure 1 example to the printed digits (13B → 7B, 1.7e22 FLOPs, 17%);
    the rounded and unrounded Chinchilla exponents give 10% and 16%. We could not read the
    paper's text here to confirm the constants, so treat this set as a reconstruction.
    """
    return ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.336, beta=0.283)


def get_law(name: str) -> ChinchillaLaw:
    return CHINCHILLA_CONSTANTS.get(name)()


# Chinchilla Approach 1 (Hoffmann et al. 2022, Table 2): N* ∝ C^0.50, D* ∝ C^0.50, i.e. a
# constant tokens-per-parameter ratio; Table 3 projects ≈ 20 tokens per parameter.
APPROACH1_TOKENS_PER_PARAM = 20.0


def approach1(n=None, flops=None):
    """(N, D, C) on Approach 1's frontier from N or from C, with D = 20·N and C = 6·N·D."""
    k = APPROACH1_TOKENS_PER_PARAM
    if n is None:
        n = np.sqrt(np.asarray(flops, float) / (6 * k))
    n = np.asarray(n, float)
    return n, k * n, 6 * n * k * n


# Kaplan et al. 2020, Section 1.2 and Table 5 (L in nats, N non-embedding parameters).
KAPLAN = dict(
    alpha_N=0.076, N_c=8.8e13,  # L(N) = (N_c/N)^α_N
    alpha_D=0.095, D_c=5.4e13,  # L(D) = (D_c/D)^α_D
    alpha_S=0.76, S_c=2.1e3,  # L(N, S) second term (S_c/S_min)^α_S
    alpha_B=0.21, B_star=2e8,  # B_crit(L) = B*/L^(1/α_B), tokens
    alpha_Cmin=0.050, Cc_min=3.1e8,  # L(C_min) = (C_c^min/C_min)^α, C in PF-days
)
# Kaplan et al. 2020 Eq. (1.7)/Fig. 14: compute-efficient N ∝ C_min^0.73; the 1.3e9 coefficient
# (C_min in PF-days) is read from Figure 14 (left), not from a table: treat it as approximate.
KAPLAN_N_OPT_COEF, KAPLAN_N_OPT_EXP = 1.3e9, 0.73


def kaplan_loss_n(n):
    """L(N) = (N_c/N)^α_N: loss of a converged model with N non-embedding parameters."""
    return (KAPLAN["N_c"] / np.asarray(n, float)) ** KAPLAN["alpha_N"]


def kaplan_loss_d(d):
    """L(D) = (D_c/D)^α_D: large model trained with early stopping on D tokens."""
    return (KAPLAN["D_c"] / np.asarray(d, float)) ** KAPLAN["alpha_D"]


def kaplan_loss_nd(n, d):
    """L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D (Kaplan et al. 2020, Eq. 1.5)."""
    k = KAPLAN
    n, d = np.asarray(n, float), np.asarray(d, float)
    return ((k["N_c"] / n) ** (k["alpha_N"] / k["alpha_D"]) + k["D_c"] / d) ** k["alpha_D"]


def kaplan_critical_batch(loss):
    """B_crit(L) = B*/L^(1/α_B) in tokens (Kaplan et al. 2020, Eq. 1.4)."""
    return KAPLAN["B_star"] / np.asarray(loss, float) ** (1 / KAPLAN["alpha_B"])


def kaplan_s_min(steps, batch_tokens, loss):
    """S_min = S / (1 + B_crit(L)/B): steps at a batch far above B_crit (Kaplan Eq. 5.4)."""
    return np.asarray(steps, float) / (1 + kaplan_critical_batch(loss) / np.asarray(batch_tokens))


def kaplan_loss_ns(n, s_min):
    """L(N, S) = (N_c/N)^α_N + (S_c/S_min)^α_S (Kaplan et al. 2020, Eq. 1.6)."""
    return kaplan_loss_n(n) + (KAPLAN["S_c"] / np.asarray(s_min, float)) ** KAPLAN["alpha_S"]


def kaplan_optimal(flops):
    """Kaplan's compute-efficient allocation: N = 1.3e9·C^0.73 (C in PF-days), D = C/(6N)."""
    c_pf = np.asarray(flops, float) / PF_DAY
    n = KAPLAN_N_OPT_COEF * c_pf**KAPLAN_N_OPT_EXP
    loss = (KAPLAN["Cc_min"] / c_pf) ** KAPLAN["alpha_Cmin"]
    return n, np.asarray(flops, float) / (6 * n), loss
