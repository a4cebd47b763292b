"""condnum.immunize.harden: orthogonal mixing keeps every kappa and defeats standardization."""

from __future__ import annotations

import pytest
import torch

from condnum.attack import Adam, LineSearchGD, run_suite
from condnum.immunize import LinearImmunization, orthogonal_mix, random_orthogonal
from condnum.metrics import RULES, rir

F64 = torch.float64


def data(n: int = 120, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    return X, X @ torch.randn(d, generator=g, dtype=F64)


def test_random_orthogonal_is_orthogonal_and_seeded():
    Q = random_orthogonal(7, seed=3)
    torch.testing.assert_close(Q.T @ Q, torch.eye(7, dtype=F64))
    assert torch.equal(Q, random_orthogonal(7, seed=3))
    assert not torch.equal(Q, random_orthogonal(7, seed=4))
    with pytest.raises(ValueError, match="d must be >= 1"):
        random_orthogonal(0)


def test_mix_keeps_kappas_rir_and_the_primary_model():
    X_P, y = data()
    X_H, _ = data(seed=1)
    theta = torch.diag(torch.logspace(0, -3, 8, dtype=F64))
    res = LinearImmunization(theta, torch.linspace(-1, 1, 8, dtype=F64),
                             torch.ones(8, dtype=F64), torch.tensor(0.5, dtype=F64))  # fmt: skip
    mixed = orthogonal_mix(res, seed=2)
    for rule in RULES:
        a = rir(X_P, X_H, res.theta, res.bias, rule=rule, backend="eigvalsh")
        b = rir(X_P, X_H, mixed.theta, mixed.bias, rule=rule, backend="eigvalsh")
        assert b.rir == pytest.approx(a.rir, rel=1e-6) and b.ii == pytest.approx(a.ii, rel=1e-6)
    torch.testing.assert_close(mixed.predict(X_P), res.predict(X_P))
    assert mixed.settings["orthogonal_mix_seed"] == 2 and res.settings == {}


def test_mix_defeats_the_attackers_diagonal_preconditioning():
    """An axis-aligned ill-conditioning is undone by standardization; mixed, it is not."""
    X, y = data(n=200, d=6, seed=5)
    theta = torch.diag(torch.tensor([1.0, 1e-2, 1.0, 3e-3, 1.0, 1.0], dtype=F64))
    kw = dict(budget=300, views=("standardized",), progress=False,
              attackers=[[LineSearchGD()], [Adam(0.01), Adam(0.1)]])  # fmt: skip
    plain = run_suite(X, y, theta, **kw)
    mixed = run_suite(X, y, orthogonal_mix(LinearImmunization(theta), seed=0).theta, **kw)
    gd = ("GD, exact line search", "standardized")
    assert plain.verdicts[gd].slowdown < 2
    assert mixed.verdicts[gd].lower_bound or mixed.verdicts[gd].slowdown > 10
    adam = ("Adam", "standardized")
    assert mixed.verdicts[adam].slowdown > 2 * plain.verdicts[adam].slowdown
