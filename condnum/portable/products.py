"""gram(Z) = Z^T Z and covariance(theta, K) = theta^T K theta on torch operations.

One matmul each (cuBLAS on CUDA), then the upper triangle is mirrored onto the lower one so
that S is exactly symmetric. A float32 matmul runs in float64 (rounded to float32 after)
while torch may use TF32 or bfloat16 for float32 matmuls on the tensors' device
(``torch.set_float32_matmul_precision`` other than "highest",
``torch.backends.cuda.matmul.allow_tf32``, or the ``fp32_precision`` settings of torch >= 2.9:
``torch.backends.cuda.matmul``'s on CUDA, ``torch.backends.mkldnn.matmul``'s elsewhere): S
feeds the eigen-solves, and TF32's 10-bit mantissa would move its small eigenvalues by far
more than float32 rounding.
    Z: (N, d) -> S: (d, d)          half-precision Z is converted to float32 first
    theta: (D, d), K: (D, D)        K theta, then theta^T (K theta)
Host synchronisation: none for gram; one for covariance's check of K (finite, symmetric).
"""

from __future__ import annotations

import torch

from condnum._ops import HALF, check_covariance, check_matrix
from condnum.portable.checks import symmetrized


def full_fp32(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a matmul in ``dtype`` on ``device`` runs at that dtype's own precision: not a
    float32 one while torch may use TF32 or bfloat16 for it there. torch >= 2.9 keeps one
    setting per backend (cuBLAS on CUDA, oneDNN elsewhere), each resolved from its parents by
    its getter; reading the older global one raises once the newer ones have been set."""
    if dtype != torch.float32:
        return True
    backend = torch.backends.cuda if device.type == "cuda" else torch.backends.mkldnn
    precision = getattr(getattr(backend, "matmul", None), "fp32_precision", None)
    if precision is None:  # torch < 2.9
        return torch.get_float32_matmul_precision() == "highest"
    return precision in ("ieee", "none")  # any other value: assumed reduced


def _working(t: torch.Tensor) -> torch.Tensor:
    """t in the dtype its products are formed in: float64 where full_fp32 says no."""
    return t if full_fp32(t.dtype, t.device) else t.double()


def _mirror_upper(S: torch.Tensor) -> torch.Tensor:
    upper = S.triu()
    return upper + upper.triu(1).mT


def gram(Z: torch.Tensor) -> torch.Tensor:
    check_matrix(Z, "gram", "Z", allow_half=True)
    # contiguous, so that the last bits of S do not depend on Z's layout
    Zf = (Z.float() if Z.dtype in HALF else Z).contiguous()
    Zw = _working(Zf)
    return _mirror_upper(Zw.mT @ Zw).to(Zf.dtype)


def covariance(theta: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    check_covariance(theta, K)
    Ks, _, _ = symmetrized(K, "covariance", "K")
    t = _working(theta.contiguous())
    return _mirror_upper(t.mT @ (Ks.to(t.dtype) @ t)).to(theta.dtype)
