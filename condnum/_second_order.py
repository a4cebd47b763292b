"""Higher derivatives: the eigenpairs the first-order gradients use, made differentiable.

Every first-order gradient here is a rank-one term in an eigenpair of ``S`` plus a multiple
of ``S`` (``g u u^T``; ``g (lam u u^T - S/k)``; ``g R^2 (lam u u^T - S/k)``), computed with the
pair held fixed. Differentiating it again (Hessian-vector products, ``create_graph=True``)
needs the pair's derivative, first-order perturbation theory for a simple eigenvalue ``mu``
of the symmetric ``S`` with unit eigenvector ``v``:

    d mu = v^T dS v,        d v = -(S - mu I)^+ dS v      ((.)^+ on the complement of v)

``u`` may be a scaled eigenvector: ``R_ill``'s floor passes ``lam = c lam_max`` with
``u = sqrt(c) v_max``, so ``mu = lam / |u|^2``, ``d lam = u^T dS u``, ``du = -(S - mu I)^+ dS u``.
:class:`_EigenPair` attaches that derivative to a pair, written in torch operations on its
own outputs (as ``torch.linalg.eigh``'s backward is), so derivatives of every order follow.

Cost: one dense float64 solve with ``S - mu I`` (``2 d^3 / 3`` flops) per eigenpair and
differentiation, on the device of ``S``. Accuracy: the eigenpair's, so tighten the solve's
``tol`` for Hessians. At a repeated eigenvalue the second derivative does not exist: its
terms grow like 1/gap, and at an exact repeat they are non-finite, as ``eigh``'s are.
"""

from __future__ import annotations

import torch

__all__ = ["eigenpair", "r_ill_backward_vjp", "r_well_backward_vjp"]


def _sym(X: torch.Tensor) -> torch.Tensor:
    return 0.5 * (X + X.mT)


def _eigenpair_vjp(S, lam, u, g_lam, g_u) -> torch.Tensor:
    """The symmetric ``X`` (float64) with ``<X, dS> = g_lam d lam + <g_u, du>``:

    ``X = g_lam u u^T - sym(y u^T)``, ``y = (S - mu I)^+ g_u``, found by solving
    ``(S - mu I + beta v v^T) y = g_u - v (v^T g_u)`` and projecting ``y`` off ``v``. The
    deflation makes the system regular where ``mu`` is simple; ``beta = |S|_F + |mu|`` is on
    the scale of the other eigenvalues' distances to ``mu``. ``g_lam``, ``g_u``: None is zero.
    """
    u = u.double()
    X = None if g_lam is None else g_lam.double() * torch.outer(u, u)
    if g_u is None:
        return X if X is not None else torch.zeros_like(S, dtype=torch.float64)
    S, g_u = _sym(S.double()), g_u.double()
    norm_sq = u.dot(u)
    mu = lam.double() / norm_sq
    v = u / norm_sq.sqrt()
    beta = (torch.linalg.matrix_norm(S) + mu.abs()).detach()  # any beta > 0 gives the same y
    eye = torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
    A = S - mu * eye + beta * torch.outer(v, v)
    y, _ = torch.linalg.solve_ex(A, (g_u - v * v.dot(g_u)).unsqueeze(1))
    y = y.squeeze(1)
    Y = -_sym(torch.outer(y - v * v.dot(y), u))
    return Y if X is None else X + Y


class _EigenPair(torch.autograd.Function):
    """``(lam, u)`` as given, differentiable in ``S`` as an eigenpair of ``S`` (module
    docstring); the given ``lam`` and ``u`` get no gradient."""

    @staticmethod
    def forward(S, lam, u):
        return lam.clone(), u.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(inputs[0], *output)

    @staticmethod
    def backward(ctx, g_lam, g_u):
        S, lam, u = ctx.saved_tensors
        return _eigenpair_vjp(S, lam, u, g_lam, g_u).to(S.dtype), None, None


def eigenpair(S: torch.Tensor, lam: torch.Tensor, u: torch.Tensor):
    """``(lam, u)``, an eigenpair of ``S`` (``u`` possibly scaled), differentiable in ``S``."""
    return _EigenPair.apply(S, lam, u)


def _rank_one_vjp(S, lam, u, H, Hu) -> torch.Tensor:
    """The symmetric ``X`` with ``<X, dS> = <H, d(lam u u^T)>`` (float64), for the pair from
    ``eigenpair``, a symmetric float64 ``H`` and ``Hu = H u``."""
    return _eigenpair_vjp(S, lam, u, u.double().dot(Hu), 2 * lam.double() * Hu)


def _pairing(S, lam, u, H, Hu, k: int) -> torch.Tensor:
    """``<H, lam u u^T - S/k> = lam u^T H u - <H, S>/k`` (float64, ``H`` symmetric)."""
    return lam.double() * u.double().dot(Hu) - (H * S.double()).sum() / k


def r_well_backward_vjp(ctx, H):
    """Backward of ``G = g (lam u u^T - S/k)`` (``R_well``'s gradient) for the cotangent
    ``H`` (symmetrised): ``d g = <H, lam u u^T - S/k>``, ``d S = g (X(H) - H/k)``, ``X`` of
    ``_rank_one_vjp``. Differentiable again."""
    g, S, lam, u = ctx.saved_tensors
    lam, u = eigenpair(S, lam, u)
    H = _sym(H.double())
    Hu = H @ u.double()
    grad_g = _pairing(S, lam, u, H, Hu, ctx.k)
    grad_S = g.double() * (_rank_one_vjp(S, lam, u, H, Hu) - H / ctx.k)
    return grad_g.to(g.dtype), grad_S.to(S.dtype), None, None, None


def r_ill_backward_vjp(ctx, H):
    """Backward of ``G = g R^2 M``, ``M = lam u u^T - S/k`` (``R_ill``'s gradient), for the
    cotangent ``H`` (symmetrised), ``t = <H, M>``: ``d g = R^2 t``, ``d R = 2 g R t`` (on to
    ``S`` through ``R_ill``'s own gradient), ``d S = g R^2 (X(H) - H/k)``. A zero ``g`` gives
    zeros, even where ``R = +inf``, as the first-order gradient does. Differentiable again."""
    g, S, r, lam, u = ctx.saved_tensors
    lam, u = eigenpair(S, lam, u)
    H, g64, R = _sym(H.double()), g.double(), r.double()
    Hu = H @ u.double()
    t = _pairing(S, lam, u, H, Hu, ctx.k)
    zero = g64 == 0
    grad_r = torch.where(zero, 0.0, 2 * (g64 * R) * t)
    grad_S = (g64 * R) * (R * (_rank_one_vjp(S, lam, u, H, Hu) - H / ctx.k))
    grad_S = torch.where(zero, 0.0, grad_S)
    return (R * R * t).to(g.dtype), grad_S.to(S.dtype), grad_r.to(r.dtype), None, None, None
