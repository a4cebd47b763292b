"""condnum.metrics: kappa under both rules, Hessians, RIR (linear and deep), the report."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from condnum.defaults import PAPER_JITTER
from condnum.metrics import (
    RIRResult,
    format_report,
    gram,
    hessian,
    kappa,
    kappa_features,
    measurable_ceiling,
    rir,
    rir_deep,
    rir_features,
)

F64 = torch.float64


def with_spectrum(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    """Q diag(eigenvalues) Q^T with a random orthogonal Q."""
    d = len(eigenvalues)
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    S = Q @ torch.diag(torch.tensor(eigenvalues, dtype=F64)) @ Q.T
    return (S + S.T) / 2


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------------ kappa


@settings(max_examples=30, deadline=None)
@given(
    logs=st.lists(st.floats(0.0, 8.0), min_size=2, max_size=12),
    log_c=st.floats(-6.0, 6.0),
    seed=st.integers(0, 1000),
)
def test_kappa_relative_matches_spectrum_and_is_scale_invariant(logs, log_c, seed):
    ev = [10.0**x for x in logs]
    S = with_spectrum(ev, seed)
    k = kappa(S, backend="eigvalsh")
    assert k >= 1.0
    assert k == pytest.approx(max(ev) / min(ev), rel=1e-6)
    assert kappa(10.0**log_c * S, backend="eigvalsh") == pytest.approx(k, rel=1e-6)


def test_kappa_identity_and_one_by_one():
    assert kappa(torch.eye(5, dtype=F64)) == pytest.approx(1.0, rel=1e-6)
    assert kappa(torch.tensor([[3.0]])) == 1.0
    assert kappa(torch.eye(5, dtype=F64), "paper") == pytest.approx(1.0)


def test_relative_rule_ignores_null_directions():
    S = with_spectrum([0.0, 0.0, 1.0, 4.0, 10.0])
    assert kappa(S, backend="eigvalsh") == pytest.approx(10.0, rel=1e-9)
    # a threshold above an eigenvalue drops it from the numerical range
    assert kappa(S, rtol=0.2, backend="eigvalsh") == pytest.approx(2.5, rel=1e-9)


def test_the_two_rules_on_a_tiny_eigenvalue():
    """Relative sees 1e-9 (above 1e-12 * lambda_max); paper adds 1e-6 to it."""
    S = torch.diag(torch.tensor([1e-9, 1.0, 2.0, 3.0], dtype=F64))
    assert kappa(S, backend="eigvalsh") == pytest.approx(3.0 / 1e-9, rel=1e-6)
    expected_paper = (3.0 + PAPER_JITTER) / (1e-9 + PAPER_JITTER)
    assert kappa(S, "paper") == pytest.approx(expected_paper, rel=1e-9)
    # the paper rule is absolute: it caps kappa near lambda_max / 1e-6 and shrinks
    # kappa of a small-scale matrix, while the relative rule does not see the scale
    small = 1e-7 * torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    assert kappa(small, backend="eigvalsh") == pytest.approx(3.0, rel=1e-9)
    expected_paper = (3e-7 + PAPER_JITTER) / (1e-7 + PAPER_JITTER)
    assert kappa(small, "paper") == pytest.approx(expected_paper, rel=1e-9)
    # an exactly zero eigenvalue is excluded by both (0 + 1e-6 is not above 1e-6)
    null = torch.diag(torch.tensor([0.0, 1.0, 10.0], dtype=F64))
    assert kappa(null, "paper") == pytest.approx((10 + 1e-6) / (1 + 1e-6), rel=1e-12)
    assert kappa(null, backend="eigvalsh") == pytest.approx(10.0, rel=1e-12)


def test_kappa_float32_input_measured_in_float64():
    Z = randn(50, 6).float()
    S32 = Z.T @ Z
    assert kappa(S32, backend="eigvalsh") == pytest.approx(
        kappa(S32.double(), backend="eigvalsh"), rel=1e-12
    )


def test_kappa_bad_input():
    with pytest.raises(ValueError, match="must be square"):
        kappa(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="non-empty 2-D"):
        kappa(torch.zeros(3))
    with pytest.raises(ValueError, match="non-empty 2-D"):
        kappa(torch.zeros(0, 0))
    with pytest.raises(ValueError, match="symmetric"):
        kappa(torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="NaN or Inf"):
        kappa(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="floating point"):
        kappa(torch.eye(2, dtype=torch.long))
    with pytest.raises(ValueError, match="no positive eigenvalue"):
        kappa(torch.zeros(3, 3), backend="eigvalsh")
    with pytest.raises(ValueError, match="no eigenvalue above 0"):
        kappa(torch.zeros(3, 3), "paper")
    with pytest.raises(ValueError, match="rule must be"):
        kappa(torch.eye(2), "absolute")
    with pytest.raises(ValueError, match="backend must be"):
        kappa(torch.eye(2), backend="lapack")
    with pytest.raises(ValueError, match=r"rtol must be in \(0, 1\)"):
        kappa(torch.eye(2), rtol=0.0)


def test_condnum_backend_agrees_with_eigvalsh():
    for spectrum in ([1.0, 2.0, 50.0, 1e3], [0.0, 0.5, 3.0, 3.0, 1e5]):
        S = with_spectrum(spectrum)
        assert kappa(S, backend="condnum") == pytest.approx(kappa(S, backend="eigvalsh"), rel=1e-4)


# ------------------------------------------------------------------ Hessians


def test_hessian_and_gram():
    Z = randn(7, 4)
    torch.testing.assert_close(hessian(Z.float()), Z.T @ Z, rtol=1e-6, atol=1e-6)
    assert hessian(Z).dtype == F64 and gram(Z).shape == (4, 4)
    W = randn(3, 9)  # N < d: Z Z^T (3 x 3) has the nonzero spectrum of Z^T Z
    assert gram(W).shape == (3, 3) and hessian(W).shape == (9, 9)
    ev_small = torch.linalg.eigvalsh(gram(W))
    ev_big = torch.linalg.eigvalsh(hessian(W))[-3:]
    torch.testing.assert_close(ev_small, ev_big)


def test_kappa_features_uses_the_nonzero_spectrum():
    W = randn(3, 9, seed=1)
    s = torch.linalg.svdvals(W)
    expected = float((s[0] / s[-1]) ** 2)
    assert kappa_features(W, backend="eigvalsh") == pytest.approx(expected, rel=1e-10)
    # the paper rule works on the 9 x 9 Z^T Z, whose 6 null directions get the 1e-6
    # jitter; whenever rounding lifts one above 1e-6 it sets sigma_min, so the paper
    # value is either the same or close to lambda_max / 1e-6
    paper = kappa_features(W, "paper")
    lam_max = float(s[0] ** 2)
    assert paper == pytest.approx(expected, rel=1e-6) or paper > 0.5 * lam_max / PAPER_JITTER


# ------------------------------------------------------------------ RIR, linear


def split_subspaces(d: int = 10, n: int = 40, seed: int = 0):
    """X_P lives in coordinates 0..4, X_H in 5..9, both with orthonormal columns there."""
    g = torch.Generator().manual_seed(seed)
    A, _ = torch.linalg.qr(torch.randn(n, 5, generator=g, dtype=F64))
    B, _ = torch.linalg.qr(torch.randn(n, 5, generator=g, dtype=F64))
    X_P = torch.cat([A, torch.zeros(n, d - 5, dtype=F64)], dim=1)
    X_H = torch.cat([torch.zeros(n, 5, dtype=F64), B], dim=1)
    return X_P, X_H


@pytest.mark.parametrize("rule", ["relative", "paper"])
def test_rir_identity_is_one(rule):
    X_P, X_H = randn(30, 6, seed=1), randn(40, 6, seed=2)
    for theta in (None, torch.eye(6, dtype=F64)):
        res = rir(X_P, X_H, theta, rule=rule)
        assert res.i == pytest.approx(1.0, rel=1e-6) and res.ii == pytest.approx(1.0, rel=1e-6)
        assert res.rir == pytest.approx(1.0, rel=1e-6)
        assert res.rule == rule and res.reference == "identity"


def test_rir_theta_shrinking_a_harmful_direction():
    """Scaling one harmful-only coordinate by 0.1 multiplies kappa_H by 100, not kappa_P."""
    X_P, X_H = split_subspaces()
    theta = torch.eye(10, dtype=F64)
    theta[9, 9] = 0.1
    res = rir(X_P, X_H, theta, rule="relative", backend="eigvalsh")
    assert res.kappa_H_ref == pytest.approx(1.0, rel=1e-9)
    assert res.i == pytest.approx(100.0, rel=1e-9)
    assert res.ii == pytest.approx(1.0, rel=1e-9)
    assert res.rir == pytest.approx(100.0, rel=1e-9)
    # the same map on the primary side makes the primary task harder instead
    swapped = rir(X_H, X_P, theta, rule="relative", backend="eigvalsh")
    assert swapped.rir == pytest.approx(0.01, rel=1e-9)


def test_rir_uniform_scaling_relative_vs_paper():
    """theta = c I changes nothing under the relative rule; the paper rule sees the scale."""
    X_P, X_H = randn(30, 5, seed=3), randn(30, 5, seed=4)
    theta = 1e-4 * torch.eye(5, dtype=F64)
    rel = rir(X_P, X_H, theta, rule="relative", backend="eigvalsh")
    assert rel.i == pytest.approx(1.0, rel=1e-9) and rel.ii == pytest.approx(1.0, rel=1e-9)
    paper = rir(X_P, X_H, theta, rule="paper")
    # eigenvalues shrink by 1e-8 to the size of the 1e-6 jitter, which flattens kappa
    assert paper.i < 0.5 and paper.ii < 0.5


def test_rir_bias_and_shapes():
    X_P, X_H = randn(30, 4, seed=5), randn(30, 4, seed=6)
    theta = randn(4, 3, seed=7)
    plain = rir(X_P, X_H, theta, rule="relative", backend="eigvalsh")
    zero_bias = rir(X_P, X_H, theta, torch.zeros(3), rule="relative", backend="eigvalsh")
    assert plain == zero_bias
    shifted = rir(X_P, X_H, theta, torch.full((3,), 5.0), rule="relative", backend="eigvalsh")
    assert shifted.kappa_P_imm != pytest.approx(plain.kappa_P_imm, rel=1e-3)
    with pytest.raises(ValueError, match=r"theta must be \(4, d\)"):
        rir(X_P, X_H, randn(3, 3))
    with pytest.raises(ValueError, match=r"bias must be \(3,\)"):
        rir(X_P, X_H, theta, torch.zeros(4))
    with pytest.raises(ValueError, match="bias given without theta"):
        rir(X_P, X_H, None, torch.zeros(4))
    with pytest.raises(ValueError, match="X_P has 4 columns, X_H 5"):
        rir(X_P, randn(30, 5))


# ------------------------------------------------------------------ RIR, deep


def test_rir_deep_identical_models_give_one():
    X_P, X_H = randn(50, 8, seed=8), randn(60, 8, seed=9)
    f = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Tanh()).double()
    res = rir_deep(f, f, X_P, X_H, groups=4, group_size=20)
    assert res.groups == 4 and res.reference == "theta0" and res.rule == "paper"
    assert res.i == pytest.approx(1.0) and res.ii == pytest.approx(1.0)
    assert res.rir == pytest.approx(1.0) and res.rir_std == pytest.approx(0.0, abs=1e-9)


def test_rir_deep_matches_features_and_detects_immunization():
    X_P, X_H = split_subspaces(n=60)
    theta = torch.eye(10, dtype=F64)
    theta[9, 9] = 0.1
    kwargs = dict(groups=5, group_size=20, seed=3, rule="relative", backend="eigvalsh")
    deep = rir_deep(lambda X: X, lambda X: X @ theta, X_P, X_H, **kwargs)
    feats = rir_features(X_P, X_P @ theta, X_H, X_H @ theta, **kwargs)
    assert deep == feats
    # every group of 20 rows spans the 5-dimensional subspace, but is not orthonormal
    # there, so kappa_H grows by a factor between 1 and 100 per group, kappa_P not at all
    assert feats.ii == pytest.approx(1.0, rel=1e-9)
    assert 1.0 < feats.i <= 100.0 and feats.rir == pytest.approx(feats.i, rel=1e-9)
    assert feats.rir_std > 0
    # with the roles swapped the primary task is the one made harder: RIR < 1
    swapped = rir_features(X_H, X_H @ theta, X_P, X_P @ theta, **kwargs)
    assert swapped.i == pytest.approx(1.0, rel=1e-9) and swapped.ii > 1.0
    assert 1.0 / swapped.ii <= swapped.rir < 1.0  # mean of 1 / ii_g, Jensen


def test_rir_groups_are_seeded():
    X_P, X_H = randn(50, 8, seed=10), randn(50, 8, seed=11)
    th = randn(8, 8, seed=12)
    a = rir_features(X_P, X_P @ th, X_H, X_H @ th, groups=3, group_size=10, seed=1)
    b = rir_features(X_P, X_P @ th, X_H, X_H @ th, groups=3, group_size=10, seed=1)
    c = rir_features(X_P, X_P @ th, X_H, X_H @ th, groups=3, group_size=10, seed=2)
    assert a == b and a != c


def test_rir_groups_bad_input():
    X = randn(10, 3)
    with pytest.raises(ValueError, match="has 10 rows, fewer than group_size=20"):
        rir_features(X, X, X, X, group_size=20)
    with pytest.raises(ValueError, match="same N for both models"):
        rir_features(X, X[:5], X, X, group_size=5)
    with pytest.raises(ValueError, match="groups >= 1"):
        rir_deep(lambda x: x, lambda x: x, X, X, groups=0, group_size=5)


# ------------------------------------------------------------------ report


def test_report_is_an_aligned_table():
    X_P, X_H = split_subspaces()
    theta = torch.eye(10, dtype=F64)
    theta[9, 9] = 0.1
    results = {
        "relative": rir(X_P, X_H, theta, rule="relative"),
        "deep": rir_features(X_P, X_P, X_H, X_H @ theta, groups=2, group_size=10),
    }
    text = format_report(results, title="toy")
    lines = text.splitlines()
    assert lines[0] == "toy"
    assert len({len(line) for line in lines[1:5]}) == 1  # header, rule, two aligned rows
    assert "RIR" in lines[1] and lines[3].lstrip().startswith("relative")
    assert lines[4].lstrip().startswith("deep") and "±" in lines[4]
    assert lines[3].split()[5] == "100" and lines[3].split()[-1] == "100"  # (i), RIR
    assert lines[5] == "(κ and ratios averaged over 2 groups)"
    single = results["relative"]
    assert isinstance(single, RIRResult) and str(single) == format_report(single)


def test_report_states_the_relative_rules_ceiling():
    """A relative-rule kappa near 1/rtol is flagged (with the rtol used); the paper rule's
    and a kappa far from the ceiling are not."""
    X = torch.eye(4, dtype=F64)
    theta = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1e-4], dtype=F64))  # kappa(H_H) = 1e8
    flagged = rir(X, X, theta, rule="relative", rtol=1e-9)
    assert flagged.near_ceiling and measurable_ceiling(1e-9) == pytest.approx(1e9)
    assert "measurable ceiling 1/rtol = 1e+09" in format_report({"x": flagged})
    assert not rir(X, X, theta, rule="relative").near_ceiling  # default ceiling 1e12
    assert not rir(X, X, theta, rule="paper").near_ceiling
    assert "ceiling" not in format_report(rir(X, X, theta, rule="relative"))
