"""The regularizers of Zheng et al. (ICML 2025) and the kernels they rest on.

All functions take float32 or float64 tensors (``gram`` also float16/bfloat16, with
float32 accumulation) on one device, and are differentiable where stated. ``S`` is a
symmetric positive semi-definite (d, d) matrix, e.g. the Hessian ``Z^T Z`` of a linear
probe on features ``Z``.

    R_well(S) = 1/2 sigma_max(S)^2 - ||S||_F^2 / (2k)                      (>= 0)
    R_ill(S)  = 1 / D(S),   D(S) = ||S||_F^2 / (2k) - 1/2 sigma_min(S)^2    (> 0)
    kappa(S)  = sigma_max(S) / sigma_min(S)

For kappa, ``sigma_min`` is taken over the numerical range: the smallest eigenvalue above
``rtol * sigma_max``, ``rtol = d * eps(S.dtype)`` by default
(:func:`condnum.defaults.dtype_rtol`; :mod:`condnum.metrics` measures with 1e-12).
``R_ill`` uses by default the smallest eigenvalue floored at ``rtol * sigma_max``
(:func:`floored_min`), which is continuous where eigenvalues leave the range.
Gradients are analytic (``dR_well/dS = sigma_max v v^T - S/k``, ``dR_ill/dS =
(sigma_min u u^T - S/k) / D^2``): no eigendecomposition is differentiated. Higher derivatives
(``create_graph=True``, Hessian-vector products) add the eigenvector's derivative
``du = -(S - lam I)^+ dS u``: one float64 solve per eigenpair (``condnum._second_order``).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, NamedTuple

import torch

from condnum import _policy
from condnum._ops import check_square, ops, resolve_k
from condnum.defaults import DEFAULT_NUM_ITERS, DEFAULT_TOL, dtype_rtol
from condnum.portable.fixed_budget import below_floor

__all__ = [
    "gram",
    "covariance",
    "extreme_eigh",
    "top_eigh",
    "condition_number",
    "r_ill",
    "r_well",
    "floored_min",
    "FlooredMin",
    "below_floor",
    "Edge",
    "DEFAULT_NUM_ITERS",
    "DEFAULT_TOL",
]

#: What ``sigma_min`` is at the edge of the numerical range (see :func:`r_ill`).
Edge = Literal["floor", "range"]


def gram(Z: torch.Tensor) -> torch.Tensor:
    """``S = Z^T Z`` for features ``Z`` of shape (N, d); exactly symmetric, (d, d).

    Only one triangle is computed. float16/bfloat16 ``Z`` gives a float32 ``S``
    (float32 accumulation). Differentiable: ``dL/dZ = Z (G + G^T)``. Cost ~ N d^2 flops.
    """
    return ops.gram(Z)


def covariance(theta: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """``S = theta^T K theta`` for a linear extractor ``theta`` (D, d), symmetric ``K`` (D, D).

    Forms only ``K theta`` (D, d) and one triangle of ``S``. Differentiable in both:
    ``dL/dtheta = K theta (G + G^T)``, ``dL/dK = theta G theta^T``.
    """
    return ops.covariance(theta, K)


def _as_float(S: torch.Tensor) -> torch.Tensor:
    return S.float() if S.dtype in (torch.float16, torch.bfloat16) else S


def _budget(S: torch.Tensor, num_iters: int | None, tol: float | None) -> tuple[int, float]:
    return (
        DEFAULT_NUM_ITERS if num_iters is None else num_iters,
        DEFAULT_TOL.get(S.dtype, DEFAULT_TOL[torch.float32]) if tol is None else tol,
    )


def _check_converged(
    err: torch.Tensor, tol: float, op: str, num_iters: int, dtype: torch.dtype
) -> None:
    """Warn when the solver's error bound exceeds ``tol`` (CPU only: no device sync), with
    the remedy: more steps, or, when ``tol`` is below the rounding level of S's dtype (the
    floor under every error bound, ``_policy.product_floor`` relative to lam_max), a wider
    dtype or a larger ``tol``."""
    if torch.compiler.is_compiling() or err.device.type != "cpu" or tol == 0:
        return  # tol = 0: a fixed budget asked for, err reports its accuracy
    if err.item() > tol:
        floor = _policy.product_floor(1.0, torch.finfo(dtype).eps)
        remedy = (
            f"tol is below the rounding level of {dtype} S ({floor:.2e} relative to lam_max): "
            "use float64 or a larger tol"
            if tol < floor
            else "increase num_iters"
        )
        warnings.warn(
            f"condnum.{op}: eigenvalues did not reach tol = {tol:g} in num_iters = {num_iters} "
            f"Lanczos steps (relative error bound {err.item():.2e}); {remedy}",
            stacklevel=3,
        )


def extreme_eigh(
    S: torch.Tensor,
    *,
    rtol: float | None = None,
    num_iters: int | None = None,
    tol: float | None = None,
    v0_min: torch.Tensor | None = None,
    v0_max: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Extreme eigenpairs ``(lam_min, lam_max, u_min, u_max)`` of a symmetric PSD ``S`` (d, d).

    ``lam_min`` is the smallest eigenvalue above ``rtol * lam_max``. Lanczos with full
    reorthogonalisation on ``S`` gives both ends when ``S`` is well conditioned; otherwise
    the bottom end comes from shift-and-invert Lanczos through a float64 Cholesky factor,
    so its relative accuracy does not degrade with kappa. Each eigenvalue is accurate to
    ``tol`` relative (default ``DEFAULT_TOL``: 1e-4 float32, 1e-7 float64) within
    ``num_iters`` steps per end (a warning says when not; a ``tol`` below the rounding of
    S's dtype, ``4 eps`` relative to lam_max, is never met). ``v0_min``/``v0_max`` warm-start
    the solver (e.g. the previous step's vectors). Eigenvectors have unit norm and their
    largest-magnitude component positive; for a repeated eigenvalue any unit vector of its
    eigenspace may be returned. Differentiable in the eigenvalues (``d lam = u^T dS u``), to
    every order; the eigenvectors are not.
    Cost: O(m d^2) Lanczos, plus d^3/3 for the Cholesky when the bottom end needs it.
    """
    S = _as_float(S)
    check_square(S, "extreme_eigh")
    num_iters, tol = _budget(S, num_iters, tol)
    rtol = dtype_rtol(S) if rtol is None else rtol
    *result, err = ops.extreme_eigh(S, num_iters, rtol, tol, v0_min, v0_max)
    _check_converged(err, tol, "extreme_eigh", num_iters, S.dtype)
    return tuple(result)


def top_eigh(
    S: torch.Tensor,
    *,
    num_iters: int | None = None,
    tol: float | None = None,
    v0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top eigenpair ``(lam_max, u_max)`` of a symmetric PSD ``S`` by Lanczos (see extreme_eigh)."""
    S = _as_float(S)
    check_square(S, "top_eigh")
    num_iters, tol = _budget(S, num_iters, tol)
    lam_max, u_max, err = ops.top_eigh(S, num_iters, tol, v0)
    _check_converged(err, tol, "top_eigh", num_iters, S.dtype)
    return lam_max, u_max


def condition_number(S: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """``kappa(S) = lam_max / lam_min`` over the numerical range (see ``extreme_eigh``), in
    S's dtype, ``rtol`` defaulting to the ops' ``d * eps`` (:func:`condnum.defaults.dtype_rtol`);
    :func:`condnum.metrics.kappa` measures in float64 with ``rtol = 1e-12`` instead.

    Measurable up to about ``1/rtol``; pass float64 ``S`` for kappa beyond ~1e6.
    Raises ``ValueError`` for ``S = 0``.
    """
    lam_min, lam_max, _, _ = extreme_eigh(S.detach(), rtol=rtol)
    # no value to test on the meta device (shape-only tracing)
    if not torch.compiler.is_compiling() and lam_max.device.type != "meta" and lam_max.item() == 0:
        raise ValueError("condnum.condition_number: S is zero, so kappa(S) is undefined")
    return lam_max / lam_min


class FlooredMin(NamedTuple):
    """The bottom of the spectrum as ``R_ill`` uses it (see :func:`floored_min`)."""

    lam: torch.Tensor  #: ``max(lam_1, rtol * lam_max)``, dtype of S
    u: torch.Tensor  #: ``u_min`` in range; ``sqrt(rtol) u_max`` when saturated
    lam_max: torch.Tensor
    u_min: torch.Tensor  #: the solver's bottom eigenvector (warm start for the next call)
    u_max: torch.Tensor
    saturated: torch.Tensor  #: 0-dim bool: some eigenvalue lies at or below the floor


def floored_min(
    S: torch.Tensor,
    rtol: float | None = None,
    *,
    num_iters: int | None = None,
    tol: float | None = None,
    v0_min: torch.Tensor | None = None,
    v0_max: torch.Tensor | None = None,
) -> FlooredMin:
    """The smallest eigenvalue floored at the numerical floor: ``max(lam_1, rtol * lam_max)``.

    This is the ``sigma_min`` of ``R_ill(edge="floor")``. Where the whole spectrum is above
    ``rtol * lam_max`` it is the paper's ``sigma_min``; once an eigenvalue sinks below the
    floor (kappa beyond ``1/rtol``, what ``S``'s dtype resolves at the default ``rtol``;
    exact zeros of a rank-deficient S; rounding-negative eigenvalues of a Gram) it is the
    floor itself, so it is continuous in ``S`` and ``kappa = lam_max / lam`` saturates at
    ``1/rtol``. Its derivative is ``u u^T`` with ``u = u_min`` in range and
    ``u = sqrt(rtol) u_max`` at the floor (``d(rtol lam_max) = rtol u_max^T dS u_max``).
    ``saturated`` is decided by a float64 Cholesky of ``S - rtol lam_max I`` (it succeeds
    exactly when every eigenvalue is above the floor, up to float64 rounding; Sylvester's law
    of inertia), and in range ``lam_1`` comes from shift-and-invert Lanczos through that
    same factor (``condnum::floored_min``). Cost: Lanczos for ``lam_max``, one float64
    Cholesky (``d^3 / 3``), and in range the shift-and-invert steps; with ``tol = 0`` (a
    fixed budget) :func:`extreme_eigh`'s one Krylov space plus :func:`below_floor`.
    """
    S = _as_float(S).detach()
    check_square(S, "floored_min")
    num_iters, tol = _budget(S, num_iters, tol)
    rtol = dtype_rtol(S) if rtol is None else rtol
    lam_min, lam_max, u_min, u_max, err, saturated = ops.floored_min(
        S, num_iters, rtol, tol, v0_min, v0_max
    )
    # lam_min is unused at the floor: its accuracy matters only in range
    if not torch.compiler.is_compiling() and S.device.type == "cpu" and not bool(saturated):
        _check_converged(err, tol, "floored_min", num_iters, S.dtype)
    floor = lam_max * rtol
    lam = torch.where(saturated, floor, torch.maximum(lam_min, floor))
    u = torch.where(saturated, u_max * math.sqrt(rtol), u_min)
    return FlooredMin(lam, u, lam_max, u_min, u_max, saturated)


def r_ill(
    S: torch.Tensor,
    k: int | None = None,
    rtol: float | None = None,
    *,
    edge: Edge = "floor",
    num_iters: int | None = None,
    tol: float | None = None,
) -> torch.Tensor:
    """``R_ill(S) = 1 / D(S)``, ``D(S) = ||S||_F^2 / (2k) - sigma_min(S)^2 / 2``; ``k``: d.

    Minimising it drives sigma_min down relative to the rest of the spectrum (kappa
    grows). ``edge`` says what ``sigma_min`` is at the edge of the numerical range:

    - ``"floor"`` (default): ``max(lam_1, rtol * lam_max)`` (:func:`floored_min`). Equal to
      the paper's value while every eigenvalue is above ``rtol * lam_max``; continuous as
      eigenvalues sink below it (kappa saturates at ``1/rtol``); ``D > 0`` for ``k <= d``.
    - ``"range"``: the smallest eigenvalue above ``rtol * lam_max`` (the authors' code, with
      a relative cut). It jumps when an eigenvalue leaves the range, and ``D`` can reach 0
      when ``k`` exceeds the number of eigenvalues left in range.

    ``D`` is floored at ``64 eps ||S||_F^2 / (2k)`` (``kappa = 1`` gives that finite, large
    value, not ``+inf``). Differentiable w.r.t. ``S`` (to every order):
    ``(sigma_min u u^T - S/k) / D^2``.
    """
    check_square(S, "r_ill")
    k = resolve_k(S, k, "r_ill")
    if edge == "floor":
        m = floored_min(S, rtol, num_iters=num_iters, tol=tol)
        return ops.r_ill(S, m.lam, m.u, k)
    if edge != "range":
        raise ValueError(f"condnum.r_ill: edge must be 'floor' or 'range', got {edge!r}")
    lam_min, _, u_min, _ = extreme_eigh(S.detach(), rtol=rtol, num_iters=num_iters, tol=tol)
    return ops.r_ill(S, lam_min, u_min, k)


def r_well(
    S: torch.Tensor,
    k: int | None = None,
    *,
    num_iters: int | None = None,
    tol: float | None = None,
) -> torch.Tensor:
    """``R_well(S) = 1/2 sigma_max(S)^2 - ||S||_F^2 / (2k)``; ``k`` defaults to d.

    ``>= 0`` for ``k <= d``, zero iff all eigenvalues are equal. Differentiable w.r.t.
    ``S`` (to every order): ``sigma_max v v^T - S/k``; at a repeated sigma_max any unit ``v``
    of the eigenspace is a valid subgradient (and no second derivative exists).
    """
    check_square(S, "r_well")
    k = resolve_k(S, k, "r_well")
    lam_max, u_max = top_eigh(S.detach(), num_iters=num_iters, tol=tol)
    return ops.r_well(S, lam_max, u_max, k)
