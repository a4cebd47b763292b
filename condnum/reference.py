"""Pure-torch reference formulation: the oracle in tests and the baseline in benchmarks.

This is the regularizer as the authors wrote it: a full ``torch.linalg.eigvalsh`` of
``S`` with autograd through it. It is small and obviously correct, and costs an
eigendecomposition (``O(d^3)``) forward and backward.

    R_well(S) = 1/2 sigma_max(S)^2 - ||S||_F^2 / (2k)
    R_ill(S)  = 1 / D(S),   D(S) = ||S||_F^2 / (2k) - 1/2 sigma_min(S)^2

``sigma_min`` is taken over the numerical range: the smallest eigenvalue above
``rtol * sigma_max`` (default :func:`condnum.defaults.dtype_rtol`, ``d * eps(S.dtype)``).
"""

from __future__ import annotations

import torch

from condnum.defaults import dtype_rtol

__all__ = [
    "smallest_in_range",
    "extreme_eigvals",
    "float64_extremes",
    "condition_number",
    "r_ill",
    "r_well",
]


def smallest_in_range(ev: torch.Tensor, rtol: float) -> torch.Tensor:
    """The numerical range's ``sigma_min``: the smallest of the ascending eigenvalues ``ev``
    above ``rtol * ev[-1]`` (differentiable in that eigenvalue, not in the threshold).

    Raises:
        ValueError: no positive eigenvalue, or none above the threshold.
    """
    lam_max = ev[-1].detach()
    if not lam_max > 0:
        raise ValueError("S has no positive eigenvalue (is S zero?)")
    in_range = ev[ev > rtol * lam_max]
    if in_range.numel() == 0:
        raise ValueError("S has no eigenvalue above rtol * sigma_max")
    return in_range[0]


def extreme_eigvals(
    S: torch.Tensor, rtol: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma_min, sigma_max)`` of a symmetric PSD ``S`` by a full ``eigvalsh``.

    ``sigma_min`` is the smallest eigenvalue above ``rtol * sigma_max``. Differentiable
    through ``eigvalsh`` (which computes eigenvectors when a gradient is needed).
    """
    rtol = dtype_rtol(S) if rtol is None else rtol
    ev = torch.linalg.eigvalsh(S)
    return smallest_in_range(ev, rtol), ev[-1]


def float64_extremes(S: torch.Tensor, rtol: float | None = None) -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` of ``S`` by float64 ``eigvalsh`` on ``S``'s device, as floats.

    The oracle of the tests and benchmarks: :func:`extreme_eigvals` of ``S`` in float64
    (cuSOLVER's float64 ``eigvalsh`` is as accurate as LAPACK's, and a CPU one at d = 8192
    takes minutes).
    """
    lam_min, lam_max = extreme_eigvals(S.detach().double(), rtol)
    return lam_min.item(), lam_max.item()


def condition_number(S: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """``kappa(S) = sigma_max / sigma_min`` over the numerical range."""
    lam_min, lam_max = extreme_eigvals(S, rtol)
    return lam_max / lam_min


def _k(S: torch.Tensor, k: int | None) -> int:
    return S.shape[-1] if k is None else k


def r_well(S: torch.Tensor, k: int | None = None, rtol: float | None = None) -> torch.Tensor:
    """``R_well(S) = 1/2 sigma_max^2 - ||S||_F^2 / (2k)``."""
    _, lam_max = extreme_eigvals(S, rtol)
    return 0.5 * lam_max**2 - S.square().sum() / (2 * _k(S, k))


def r_ill(
    S: torch.Tensor, k: int | None = None, rtol: float | None = None, edge: str = "floor"
) -> torch.Tensor:
    """``R_ill(S) = 1 / max(||S||_F^2 / (2k) - 1/2 sigma_min^2, 64 eps ||S||_F^2 / (2k))``.

    ``edge="floor"``: ``sigma_min = max(lam_1, rtol * sigma_max)``; ``"range"``: the
    smallest eigenvalue above ``rtol * sigma_max`` (see ``condnum.functional.r_ill``).
    """
    if edge == "floor":
        rtol = dtype_rtol(S) if rtol is None else rtol
        ev = torch.linalg.eigvalsh(S)
        lam_min = torch.maximum(ev[0], rtol * ev[-1])
    else:
        lam_min, _ = extreme_eigvals(S, rtol)
    half_mean_sq = S.square().sum() / (2 * _k(S, k))
    floor = 64 * torch.finfo(S.dtype).eps * half_mean_sq
    return 1.0 / torch.maximum(half_mean_sq - 0.5 * lam_min**2, floor)
