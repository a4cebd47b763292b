"""The largest slowdown any affine extractor can force on an attacker, where one is known.

Finite termination. Conjugate gradient on the probe's quadratic (Hessian ``H = 2 A^T A / n``)
reaches the minimiser after at most ``m`` steps in exact arithmetic, with ``m`` the number
of distinct eigenvalues of ``H`` that the starting gradient excites, so ``m <= rank(A)``
(Hestenes & Stiefel 1952). The suite counts the starting gradient as an evaluation, so CG
needs at most ``rank(A) + 1`` evaluations, whatever the spectrum. The closed-form solve
always needs one.

Any affine extractor ``Z = X theta + 1 b^T`` has ``col(Z)`` inside ``col([X, 1])``, and every
view of :mod:`condnum.attack.problem` keeps that inclusion (centring maps both into
``col(X - mean)``, per-feature scaling and whitening do not enlarge a column space, the
classifier's intercept column is in both). So in each view

    rank(A_Z) <= r_affine = rank(A of [X, 1] in that view),

and no affine extractor, however it shapes the spectrum, can make CG spend more than
``r_affine + 1`` evaluations: its slowdown is at most ``(r_affine + 1) / evals(raw)``
(:meth:`condnum.attack.attackers.Attacker.max_evals` gives each attacker's bound).
Ranks are numerical: singular values above ``max(n, p) eps s_max`` (float64).

Floating point. Rounding destroys the orthogonality of CG's residuals; CG then behaves like
exact CG on a larger matrix whose eigenvalues cluster around the true ones (Greenbaum
1989), and re-discovers the large eigenvalues over and over. On a spread, ill-conditioned
spectrum this delay can exceed the exact bound many times (a geometric spectrum with
``kappa = 1e8`` over rank 80 needs several hundred evaluations). That delay is an artefact
an attacker removes at no extra gradient cost (CG with reorthogonalisation, LSQR, or the
closed-form solve), so it is not counted as a guarantee; measured CG counts above the
exact bound are reported as they are.

L-BFGS with an exact line search on a quadratic generates CG's iterates (Nazareth 1979), so
the same bound holds per iteration; ``torch.optim.LBFGS`` with a strong-Wolfe search
accepts inexact steps and spends a varying number of evaluations per iteration, so no
bound is claimed for it.
"""

from __future__ import annotations

import torch

from condnum.attack.problem import View, make_problem

__all__ = ["affine_rank", "numerical_rank"]


def numerical_rank(A: torch.Tensor) -> int:
    """Singular values of ``A`` above ``max(n, p) eps s_max`` (float64 ``eps``); 0 for ``A = 0``."""
    if A.ndim != 2 or A.numel() == 0:
        raise ValueError(f"A must be a non-empty matrix, got shape {tuple(A.shape)}")
    s = torch.linalg.svdvals(A.double())
    if not s[0] > 0:
        return 0
    return int((s > max(A.shape) * torch.finfo(torch.float64).eps * s[0]).sum())


def affine_rank(X: torch.Tensor, view: View, *, classification: bool = False) -> int:
    """``r_affine``: the rank of the attacker's design matrix built from ``[X, 1]`` in ``view``,
    an upper bound on the rank of the design built from any affine features of ``X``.

    Args:
        X: (n, D) training inputs, any floating dtype (computed in float64).
        view: ``"released"``, ``"standardized"`` or ``"whitened"``.
        classification: the classifier's design (an intercept column appended).
    """
    if not isinstance(X, torch.Tensor) or X.ndim != 2:
        raise ValueError(f"X must be an (n, D) matrix, got {getattr(X, 'shape', type(X))}")
    X1 = torch.cat([X.detach().double(), torch.ones(X.shape[0], 1, dtype=torch.float64)], 1)
    labels = torch.arange(X.shape[0]) % 2  # the design does not depend on the targets
    y = labels if classification else labels.double()
    return numerical_rank(make_problem(X1, y, view=view, classification=classification).A)
