"""The regularizers of Zheng et al. (ICML 2025) and the kernels they rest on.

All functions take float32 or float64 tensors (``gram`` also float16/bfloat16, with
float32 accumulation) on one device, and are differentiable where stated. ``S`` is a
symmetric positive semi-definite (d, d) matrix, e.g. the Hessian ``Z^T Z`` of a linear
probe on features ``Z``.

    R_well(S) = 1/2 sigma_max(S)^2 - ||S||_F^2 / (2k)                      (>= 0)
    R_ill(S)  = 1 / D(S),   D(S) = ||S||_F^2 / (2k) - 1/2 sigma_min(S)^2    (> 0)
    kappa(S)  = sigma_max(S) / sigma_min(S)

``sigma_min`` is taken over the numerical range: the smallest eigenvalue above
``rtol * sigma_max``, ``rtol = d * eps(S.dtype)`` by default (torch.linalg.matrix_rank's
rule). Gradients are analytic (``dR_well/dS = sigma_max v v^T - S/k``, ``dR_ill/dS =
(sigma_min u u^T - S/k) / D^2``): no eigendecomposition is differentiated.
"""

from __future__ import annotations

import warnings

import torch

from condnum._ops import _check_square, ops
from condnum.reference import default_rtol

__all__ = [
    "gram",
    "covariance",
    "extreme_eigh",
    "top_eigh",
    "condition_number",
    "r_ill",
    "r_well",
    "default_rtol",
    "DEFAULT_NUM_ITERS",
    "DEFAULT_TOL",
]

#: Lanczos budget per call (capped at d); each end stops earlier once converged.
DEFAULT_NUM_ITERS = 128
#: Relative accuracy asked of each extreme eigenvalue, by dtype of S.
DEFAULT_TOL = {torch.float32: 1e-4, torch.float64: 1e-7}


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


def _check_converged(err: torch.Tensor, tol: float, op: str, num_iters: int) -> None:
    """Warn when the solver's error bound exceeds ``tol`` (CPU only: no device sync)."""
    if torch.compiler.is_compiling() or err.device.type != "cpu":
        return
    if err.item() > tol:
        warnings.warn(
            f"condnum.{op}: eigenvalues did not reach tol = {tol:g} in num_iters = {num_iters} "
            f"Lanczos steps (relative error bound {err.item():.2e}); increase num_iters",
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
    ``num_iters`` steps per end (a warning says when not). ``v0_min``/``v0_max`` warm-start
    the solver (e.g. the previous step's vectors). Eigenvectors have unit norm and their
    largest-magnitude component positive; for a repeated eigenvalue any unit vector of its
    eigenspace may be returned. Differentiable in the eigenvalues (``d lam = u^T dS u``);
    the eigenvectors are not.
    Cost: O(m d^2) Lanczos, plus d^3/3 for the Cholesky when the bottom end needs it.
    """
    S = _as_float(S)
    _check_square(S, "extreme_eigh")
    num_iters, tol = _budget(S, num_iters, tol)
    rtol = default_rtol(S) if rtol is None else rtol
    *result, err = ops.extreme_eigh(S, num_iters, rtol, tol, v0_min, v0_max)
    _check_converged(err, tol, "extreme_eigh", num_iters)
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
    _check_square(S, "top_eigh")
    num_iters, tol = _budget(S, num_iters, tol)
    lam_max, u_max, err = ops.top_eigh(S, num_iters, tol, v0)
    _check_converged(err, tol, "top_eigh", num_iters)
    return lam_max, u_max


def condition_number(S: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """``kappa(S) = lam_max / lam_min`` over the numerical range (see ``extreme_eigh``).

    Measurable up to about ``1/rtol``; pass float64 ``S`` for kappa beyond ~1e6.
    Raises ``ValueError`` for ``S = 0``.
    """
    lam_min, lam_max, _, _ = extreme_eigh(S.detach(), rtol=rtol)
    # no value to test on the meta device (shape-only tracing)
    if not torch.compiler.is_compiling() and lam_max.device.type != "meta" and lam_max.item() == 0:
        raise ValueError("condnum.condition_number: S is zero, so kappa(S) is undefined")
    return lam_max / lam_min


def _resolve_k(S: torch.Tensor, k: int | None, op: str) -> int:
    if k is None:
        return S.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"condnum.{op}: k must be a positive int, got {k!r}")
    if k <= 0:
        raise ValueError(f"condnum.{op}: k must be positive, got {k}")
    return k


def r_ill(
    S: torch.Tensor,
    k: int | None = None,
    rtol: float | None = None,
    *,
    num_iters: int | None = None,
    tol: float | None = None,
) -> torch.Tensor:
    """``R_ill(S) = 1 / (||S||_F^2 / (2k) - 1/2 sigma_min(S)^2)``; ``k`` defaults to d.

    Minimising it drives sigma_min down relative to the rest of the spectrum (kappa
    grows). Differentiable w.r.t. ``S``: ``(sigma_min u u^T - S/k) / D^2``. Raises
    ``ValueError`` when ``D(S) = 0`` (kappa = 1, ``R_ill = +inf``).
    """
    _check_square(S, "r_ill")
    k = _resolve_k(S, k, "r_ill")
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
    ``S``: ``sigma_max v v^T - S/k``; at a repeated sigma_max any unit ``v`` of the
    eigenspace is a valid subgradient.
    """
    _check_square(S, "r_well")
    k = _resolve_k(S, k, "r_well")
    lam_max, u_max = top_eigh(S.detach(), num_iters=num_iters, tol=tol)
    return ops.r_well(S, lam_max, u_max, k)
