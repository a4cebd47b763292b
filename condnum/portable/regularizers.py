"""R_ill and R_well (Zheng et al. 2025) and their analytic gradients on torch operations.

    R_well(S) = lam_max^2 / 2 - ||S||_F^2 / (2k)       dR_well/dS = lam_max u u^T - S / k
    R_ill(S)  = 1 / max(D, ILL_FLOOR eps(S) ||S||_F^2 / (2k)),
                D = ||S||_F^2 / (2k) - lam_min^2 / 2    dR_ill/dS = R_ill^2 (lam_min u u^T - S / k)
S: (d, d), lam: (), u: (d,). ||S||_F^2 is summed in float64 on S divided by a power of two
(condnum.portable.checks.squared_norm) and the values are formed in those units, so they
overflow to +inf only when the true value does. The gradients are a (b u u^T + c S) in
float64, rounded once to S's dtype.
Host synchronisation: one copy per forward (the NaN/Inf check of S); none backward.
"""

from __future__ import annotations

import torch

from condnum import _policy
from condnum._ops import check_spectral_operands, fail
from condnum.portable.checks import squared_norm


def _checked_squared_norm(S: torch.Tensor, op: str):
    scale, total, finite = squared_norm(S)
    if not finite.item():
        fail(op, "S contains NaN or Inf")
    return scale, total


def _rank_one_plus_scaled(S, u, a, b, c) -> torch.Tensor:
    """a (b u u^T + c S) in float64 (a, b, c: float64 0-dim tensors), in S's dtype."""
    u64 = u.double()
    return (a * (torch.outer(b * u64, u64) + c * S.contiguous().double())).to(S.dtype)


def r_well(S, lam_max, u_max, k: int) -> torch.Tensor:
    check_spectral_operands(S, lam_max, u_max, k, "r_well", "lam_max", "u_max")
    scale, total = _checked_squared_norm(S, "r_well")
    lam = lam_max.double() / scale
    return ((0.5 * lam * lam - total / (2.0 * k)) * scale * scale).to(S.dtype)


def r_well_backward(grad, S, lam_max, u_max, k: int) -> torch.Tensor:
    check_spectral_operands(S, lam_max, u_max, k, "_r_well_backward", "lam_max", "u_max")
    return _rank_one_plus_scaled(S, u_max, grad.double(), lam_max.double(), -1.0 / k)


def r_ill(S, lam_min, u_min, k: int) -> torch.Tensor:
    check_spectral_operands(S, lam_min, u_min, k, "r_ill", "lam_min", "u_min")
    scale, total = _checked_squared_norm(S, "r_ill")
    lam = lam_min.double() / scale
    half_mean_sq = total / (2.0 * k)
    D = half_mean_sq - 0.5 * lam * lam  # D(S) / scale^2
    D_eff = torch.maximum(D, _policy.ILL_FLOOR * torch.finfo(S.dtype).eps * half_mean_sq)
    return (1.0 / D_eff / scale / scale).to(S.dtype)


def r_ill_backward(grad, S, r, lam_min, u_min, k: int) -> torch.Tensor:
    """grad R (R lam u u^T - (R / k) S): R^2 alone may overflow where the gradient does not.
    A zero grad gives zeros, even where R = +inf (S = 0): no push, not NaN."""
    check_spectral_operands(S, lam_min, u_min, k, "_r_ill_backward", "lam_min", "u_min")
    rv, g = r.double(), grad.double()
    out = _rank_one_plus_scaled(S, u_min, g * rv, rv * lam_min.double(), -rv / k)
    return torch.where(g == 0, torch.zeros_like(out), out)
