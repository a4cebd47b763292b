"""gram(Z) = Z^T Z and covariance(theta, K) = theta^T K theta on torch operations.

One matmul each (cuBLAS on CUDA), then the upper triangle is mirrored onto the lower one so
that S is exactly symmetric.
    Z: (N, d) -> S: (d, d)          half-precision Z is converted to float32 first
    theta: (D, d), K: (D, D)        K theta, then theta^T (K theta)
Host synchronisation: none for gram; one for covariance's check of K (finite, symmetric).
"""

from __future__ import annotations

import torch

from condnum._ops import HALF, check_covariance, check_matrix
from condnum.portable.checks import symmetrized


def _mirror_upper(S: torch.Tensor) -> torch.Tensor:
    upper = S.triu()
    return upper + upper.triu(1).mT


def gram(Z: torch.Tensor) -> torch.Tensor:
    check_matrix(Z, "gram", "Z", allow_half=True)
    # contiguous, so that the last bits of S do not depend on Z's layout
    Zf = (Z.float() if Z.dtype in HALF else Z).contiguous()
    return _mirror_upper(Zf.mT @ Zf)


def covariance(theta: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    check_covariance(theta, K)
    Ks, _, _ = symmetrized(K, "covariance", "K")
    t = theta.contiguous()
    return _mirror_upper(t.mT @ (Ks @ t))
