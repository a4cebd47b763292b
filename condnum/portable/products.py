"""gram(Z) = Z^T Z and covariance(theta, K) = theta^T K theta on torch operations.

One matmul each (cuBLAS on CUDA), then the upper triangle is mirrored onto the lower one so
that S is exactly symmetric. A float32 matmul runs in float64 (rounded to float32 after)
while torch may use TF32 or bfloat16 for float32 matmuls
(``torch.set_float32_matmul_precision`` other than "highest", or
``torch.backends.cuda.matmul.allow_tf32``): S feeds the eigen-solves, and TF32's 10-bit
mantissa would move its small eigenvalues by far more than float32 rounding.
    Z: (N, d) -> S: (d, d)          half-precision Z is converted to float32 first
    theta: (D, d), K: (D, D)        K theta, then theta^T (K theta)
Host synchronisation: none for gram; one for covariance's check of K (finite, symmetric).
"""

from __future__ import annotations

import torch

from condnum._ops import HALF, check_covariance, check_matrix
from condnum.portable.checks import symmetrized


def full_fp32(dtype: torch.dtype) -> bool:
    """Whether a matmul in ``dtype`` runs at that dtype's own precision: not a float32 one
    while torch may use TF32 or bfloat16 for it."""
    return dtype != torch.float32 or torch.get_float32_matmul_precision() == "highest"


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b, in float64 and rounded back where full_fp32 says no."""
    if full_fp32(a.dtype):
        return a @ b
    return (a.double() @ b.double()).to(a.dtype)


def _mirror_upper(S: torch.Tensor) -> torch.Tensor:
    upper = S.triu()
    return upper + upper.triu(1).mT


def gram(Z: torch.Tensor) -> torch.Tensor:
    check_matrix(Z, "gram", "Z", allow_half=True)
    # contiguous, so that the last bits of S do not depend on Z's layout
    Zf = (Z.float() if Z.dtype in HALF else Z).contiguous()
    return _mirror_upper(_matmul(Zf.mT, Zf))


def covariance(theta: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    check_covariance(theta, K)
    Ks, _, _ = symmetrized(K, "covariance", "K")
    t = theta.contiguous()
    return _mirror_upper(_matmul(t.mT, _matmul(Ks, t)))
