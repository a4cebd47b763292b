"""condnum.attack.bounds: finite termination of conjugate gradient bounds the slowdown any
affine extractor can force; checked against measured counts on synthetic problems."""

from __future__ import annotations

import pytest
import torch

from condnum.attack import (
    LBFGS,
    ClosedForm,
    ConjugateGradient,
    GradientDescent,
    Trace,
    affine_rank,
    make_problem,
    numerical_rank,
    run_suite,
)

#: At this kappa(A^T A), float64 CG keeps its residuals orthogonal enough to terminate
#: within the exact-arithmetic bound (rank 12: rank + 1 evaluations to an excess of 1e-8;
#: at kappa 1e3 rounding already costs two or three more).
MILD_KAPPA = 1e2


def spectrum_design(n: int, r: int, kappa: float, seed: int = 0) -> torch.Tensor:
    """(n, r) design with singular values geometrically spread: kappa(A^T A) = kappa."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -0.5 * torch.log10(torch.tensor(kappa)).item(), r, dtype=torch.float64)
    return (U * s) @ V.T


def cg_evals(Z: torch.Tensor, y: torch.Tensor, tol: float, budget: int = 5000) -> int | None:
    problem = make_problem(Z, y)
    trace = Trace(problem, budget=budget, tol=tol)
    ConjugateGradient().run(problem, trace)
    return trace.evals_to_tol


def test_numerical_rank_and_affine_rank():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 5, generator=g, dtype=torch.float64)
    X = torch.cat([X, X[:, :1] + 2 * X[:, 1:2], torch.full((30, 1), 3.0)], 1)  # rank 6 with 1
    assert numerical_rank(X) == 6
    assert numerical_rank(torch.zeros(4, 3)) == 0
    assert affine_rank(X, "released") == 6  # the constant column already spans 1
    assert affine_rank(X, "standardized") == 5 and affine_rank(X, "whitened") == 5
    assert affine_rank(X, "released", classification=True) == 6
    assert affine_rank(X, "standardized", classification=True) == 6
    assert affine_rank(X[:, :5], "released") == 6  # [X, 1] gains the intercept


@pytest.mark.parametrize("view", ["released", "standardized", "whitened"])
@pytest.mark.parametrize("d", [3, 8, 20])  # narrower, as wide as and wider than X
def test_any_affine_extractor_stays_within_affine_rank(view, d):
    g = torch.Generator().manual_seed(d)
    X = torch.randn(40, 8, generator=g, dtype=torch.float64)
    bound = affine_rank(X, view)
    for seed in range(3):
        gs = torch.Generator().manual_seed(100 + seed)
        theta = torch.randn(8, d, generator=gs, dtype=torch.float64) * torch.logspace(0, 3, d)
        bias = torch.randn(d, generator=gs, dtype=torch.float64) * 10
        y = torch.randn(40, generator=gs, dtype=torch.float64)
        A = make_problem(X @ theta + bias, y, view=view).A
        assert numerical_rank(A) <= bound


def test_cg_terminates_within_rank_plus_one_and_the_bound_is_attained():
    n, r = 60, 12
    A = spectrum_design(n, r, MILD_KAPPA)
    y = A @ torch.ones(r, dtype=torch.float64)  # every eigen-direction excited
    bound = ConjugateGradient().max_evals(numerical_rank(A))
    evals = cg_evals(A, y, tol=1e-8)
    assert evals is not None and r <= evals <= bound == r + 1


def test_suite_max_slowdown_bounds_every_affine_extractor():
    """Raw inputs against several extractors of X (a few distinct eigenvalues, spread ones,
    a wide one): measured CG slowdowns never exceed the reported bound; the closed form's
    bound is 1; attackers without a finite bound report none."""
    g = torch.Generator().manual_seed(3)
    X = spectrum_design(80, 10, 10.0, seed=3) * 80**0.5
    y = X @ torch.randn(10, generator=g, dtype=torch.float64)
    extractors = [
        torch.eye(10, dtype=torch.float64),
        torch.diag(torch.logspace(0, 1.2, 10, dtype=torch.float64)),  # kappa(H) <= ~1e4 total
        torch.randn(10, 25, generator=g, dtype=torch.float64),
    ]
    attackers = [[ConjugateGradient()], [ClosedForm()], [GradientDescent()]]
    for theta in extractors:
        res = run_suite(X, y, theta, attackers=attackers, views=("released", "standardized"),
                        tol=1e-6, progress=False)  # fmt: skip
        for (name, view), v in res.verdicts.items():
            if name == GradientDescent.name:
                assert v.max_evals is None and v.max_slowdown is None
                continue
            assert v.max_evals == (1 if name == ClosedForm.name else affine_rank(X, view) + 1)
            assert v.immunized.evals is not None and v.immunized.evals <= v.max_evals
            assert v.slowdown <= v.max_slowdown
            assert v.to_json()["max_slowdown_exact_arithmetic"] == v.max_slowdown
        assert "max" in res.table()


def test_floating_point_cg_overshoots_the_exact_bound_and_is_reported_as_measured():
    """Loss of orthogonality: a geometric spectrum with kappa 1e14 makes float64 CG need far
    more than rank + 1 evaluations; the suite reports the measured count, not the bound."""
    n, r = 60, 12
    A = spectrum_design(n, r, 1e14, seed=1)
    s = torch.linalg.svdvals(A)
    U = torch.linalg.svd(A, full_matrices=False).U
    y = U @ (s.min() / s)  # target energy on the small singular values
    evals = cg_evals(A, y, tol=1e-2)
    res = run_suite(A, y, torch.eye(r, dtype=torch.float64), attackers=[[ConjugateGradient()]],
                    views=("released",), budget=5000, progress=False)  # fmt: skip
    v = res.verdicts[(ConjugateGradient.name, "released")]
    assert v.max_evals == affine_rank(A, "released") + 1 == r + 2  # [A, 1] has rank r + 1
    assert v.raw.evals == evals and (evals is None or evals > 2 * v.max_evals)


def test_bounds_bad_input():
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="rank"):
            ConjugateGradient().max_evals(bad)
        with pytest.raises(ValueError, match="rank"):
            LBFGS().max_evals(bad)
    assert LBFGS().max_evals(5) is None and ClosedForm().max_evals(5) == 1
    with pytest.raises(ValueError, match="X must be"):
        affine_rank(torch.zeros(5), "released")
    with pytest.raises(ValueError, match="A must be"):
        numerical_rank(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="view"):
        affine_rank(torch.randn(5, 2), "rotated")
    with pytest.raises(ValueError, match="NaN"):
        affine_rank(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "released")
