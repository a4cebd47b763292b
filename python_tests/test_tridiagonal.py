"""The tridiagonal routines (the CPU kernel's, which the portable path calls through condnum._C)
against float64 torch.linalg.eigh of the dense T, and the portable Lanczos' use of them."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from condnum.portable import tridiagonal
from condnum.portable.lanczos import Lanczos


def _dense(alpha: list[float], beta: list[float]) -> torch.Tensor:
    T = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if len(alpha) > 1:
        off = torch.tensor(beta[: len(alpha) - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    return T


@st.composite
def tridiagonals(draw):
    """T with m in [1, 80], entries spread over `decades` orders of magnitude (Lanczos'
    T of an ill-conditioned S), off-diagonals positive as Lanczos makes them, and one more
    beta (beta_m, unused by T_m)."""
    m = draw(st.integers(1, 80))
    decades = draw(st.sampled_from([0.0, 3.0, 8.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    alpha = (10.0 ** rng.uniform(-decades, 0, m)).tolist()
    beta = (10.0 ** rng.uniform(-decades, 0, m) * rng.uniform(0.1, 1.0, m)).tolist()
    return alpha, beta


@given(T=tridiagonals(), i_frac=st.floats(0, 1))
def test_eigenpair_matches_dense_eigh(T, i_frac):
    alpha, beta = T
    m = len(alpha)
    i = min(int(i_frac * m), m - 1)
    values, vectors = torch.linalg.eigh(_dense(alpha, beta))
    norm = float(values.abs().max())
    theta, s = tridiagonal.eigenpair(alpha, beta, i)
    assert abs(theta - float(values[i])) <= 64 * m * 2.2e-16 * norm
    assert tridiagonal.eigenvalue(alpha, beta, i) == theta
    s = torch.from_numpy(s)
    assert abs(float(torch.linalg.vector_norm(s)) - 1) < 1e-12
    # s is an eigenvector: a small residual (a direction, when eigenvalues cluster)
    residual = torch.linalg.vector_norm(_dense(alpha, beta) @ s - theta * s)
    assert residual <= 64 * m * 2.2e-16 * norm


@given(T=tridiagonals(), x_frac=st.floats(-0.1, 1.1))
def test_sturm_count_matches_dense_eigvalsh(T, x_frac):
    alpha, beta = T
    values = torch.linalg.eigvalsh(_dense(alpha, beta))
    lo, hi = float(values[0]), float(values[-1])
    x = lo + x_frac * (hi - lo)
    count = tridiagonal.sturm_count(alpha, beta, x)
    slack = 64 * len(alpha) * 2.2e-16 * float(values.abs().max())
    assert int((values < x - slack).sum()) <= count <= int((values < x + slack).sum())


def test_sturm_count_at_the_eigenvalues_of_a_known_t():
    # T = tridiag(1, 2, 1) of order m: eigenvalues 2 - 2 cos(k pi / (m + 1)), k = 1..m
    m = 9
    values = [2 - 2 * np.cos(k * np.pi / (m + 1)) for k in range(1, m + 1)]
    alpha, beta = [2.0] * m, [1.0] * m
    for k, v in enumerate(values):
        assert tridiagonal.sturm_count(alpha, beta, v - 1e-9) == k
        assert tridiagonal.sturm_count(alpha, beta, v + 1e-9) == k + 1
        assert abs(tridiagonal.eigenvalue(alpha, beta, k) - v) < 1e-14


@given(
    d=st.integers(2, 40),
    seed=st.integers(0, 2**32 - 1),
    negative=st.sampled_from([0.0, 0.5, 2.0]),
    steps=st.integers(1, 12),
)
def test_lanczos_max_abs_value_is_the_largest_ritz_magnitude(d, seed, negative, steps):
    """max_abs_value skips the bisection for theta_0 when a Sturm count shows that no Ritz
    value lies below -|theta_{m-1}|: it must equal max(|theta_0|, |theta_{m-1}|) for
    definite and indefinite operators alike (shift-and-invert's LDL^T operator is
    indefinite, with its largest magnitudes at either end)."""
    rng = np.random.default_rng(seed)
    eigenvalues = rng.uniform(0.1, 1.0, d)
    eigenvalues[: d // 3] *= -negative  # some negative eigenvalues, up to twice the positive
    A = torch.diag(torch.from_numpy(eigenvalues))
    lz = Lanczos(lambda v: A @ v, d, steps, torch.float64, torch.device("cpu"))
    lz.start(torch.from_numpy(rng.standard_normal(d)))
    while lz.step():
        lz.ritz(lz.size - 1)  # as the checks do: the top pair first
        expected = max(abs(lz.value(0)), abs(lz.value(lz.size - 1)))
        assert lz.max_abs_value() == expected


@given(
    T=tridiagonals(),
    end=st.sampled_from(["bottom", "top", "inside"]),
    shift=st.sampled_from([0.0, 1e-12, 1e-7, -1e-7, 1e-3, -0.5]),
    bound=st.sampled_from([0.0, 1e-10, 1e-4]),
)
def test_hinted_eigenvalue_equals_the_unhinted_one(T, end, shift, bound):
    """A hint (the value at an earlier check, here moved by `shift` relative, wrong by up to
    half the value) only narrows the bracket once verified: the result matches plain
    bisection to rounding. At the ends this is the Newton path."""
    alpha, beta = T
    m = len(alpha)
    i = {"bottom": 0, "top": m - 1, "inside": m // 2}[end]
    exact = tridiagonal.eigenvalue(alpha, beta, i)
    hint = (exact * (1 + shift), bound * abs(exact))
    theta, s = tridiagonal.eigenpair(alpha, beta, i, hint)
    norm = float(np.abs(np.linalg.eigvalsh(_dense(alpha, beta).numpy())).max())
    # both bisect to 2 eps |theta| around where the Sturm count changes (which rounding can
    # move by ~eps ||T|| between the two brackets)
    assert abs(theta - exact) <= 8 * 2.2e-16 * abs(exact) + 4 * m * 2.2e-16 * norm
    assert tridiagonal.eigenvalue(alpha, beta, i, hint) == theta
    residual = np.linalg.norm(_dense(alpha, beta).numpy() @ s - theta * s)
    assert residual <= 64 * m * 2.2e-16 * norm
