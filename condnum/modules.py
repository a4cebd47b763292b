"""``RIll`` and ``RWell``: the regularizers as ``torch.nn.Module`` loss terms on features.

Called on features ``Z`` of shape (N, d) they return ``r_ill(Z^T Z)`` / ``r_well(Z^T Z)``
exactly (no 1/N), so the paper's lambda values carry over. When N < d the nonzero
spectrum of ``Z^T Z`` is that of the N x N ``Z Z^T``, which is used instead (same value,
same gradient, smaller solve). The eigenvectors of the last call are kept as buffers
(like ``spectral_norm`` keeps ``u``) and warm-start the next solve.

With ``process_group`` (data-parallel training), the Gram of the global batch
``sum_r Z_r^T Z_r`` is all-reduced over the group, so kappa is estimated from every
rank's samples and each rank's gradient w.r.t. its own features is the global loss's
(see ``condnum.distributed``).
"""

from __future__ import annotations

import torch
from torch import nn

from condnum import functional as F
from condnum._ops import ops
from condnum.distributed import all_reduce_gram

__all__ = ["RIll", "RWell"]


class _SpectralRegularizer(nn.Module):
    u_min: torch.Tensor
    u_max: torch.Tensor

    def __init__(
        self,
        k: int | None = None,
        *,
        input: str = "features",
        num_iters: int | None = None,
        tol: float | None = None,
        process_group=None,
    ) -> None:
        super().__init__()
        if input not in ("features", "gram"):
            raise ValueError(f"input must be 'features' or 'gram', got {input!r}")
        if k is not None:
            F._resolve_k(torch.empty(1, 1), k, type(self).__name__)
        self.k, self.input, self.num_iters, self.tol = k, input, num_iters, tol
        self.process_group = process_group
        self.register_buffer("u_min", torch.zeros(0))
        self.register_buffer("u_max", torch.zeros(0))

    def _gram(self, Z: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The matrix to solve (d x d, or N x N when N < d) and k (default d)."""
        name = type(self).__name__
        if Z.dim() != 2:
            raise ValueError(f"condnum.{name}: expected a 2-D input, got shape {list(Z.shape)}")
        if Z.numel() == 0:  # before Z.mT below: the message shows the shape as passed
            raise ValueError(
                f"condnum.{name}: expected a non-empty input, got shape {list(Z.shape)}"
            )
        if self.input == "gram":
            return Z, F._resolve_k(Z, self.k, name)
        n, d = Z.shape
        k = d if self.k is None else self.k
        if self.process_group is not None:  # the global batch's d x d Gram
            return all_reduce_gram(F.gram(Z), self.process_group), k
        return (F.gram(Z) if n >= d else F.gram(Z.mT)), k

    def _warm(self, buf: torch.Tensor, S: torch.Tensor) -> torch.Tensor | None:
        ok = buf.shape == (S.shape[0],) and buf.dtype == S.dtype and buf.device == S.device
        return buf if ok else None

    def _remember(self, name: str, u: torch.Tensor) -> None:
        buf = getattr(self, name)
        if buf.shape == u.shape and buf.dtype == u.dtype and buf.device == u.device:
            buf.copy_(u)
        else:
            setattr(self, name, u.detach().clone())

    def extra_repr(self) -> str:
        return f"k={self.k}, input={self.input!r}"


class RIll(_SpectralRegularizer):
    """``R_ill(Z^T Z) = 1 / (||Z^T Z||_F^2/(2k) - sigma_min^2/2)``: makes probing ill-conditioned.

    Args: ``k`` (default d), ``rtol`` (numerical-range threshold, default d eps),
    ``input="features"`` (Z of shape (N, d)) or ``"gram"`` (S of shape (d, d)),
    ``num_iters`` / ``tol`` for the eigen-solver, ``process_group`` to use the global
    batch's Gram in data-parallel training.
    """

    def __init__(self, k: int | None = None, rtol: float | None = None, **kwargs) -> None:
        super().__init__(k, **kwargs)
        self.rtol = rtol

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        S, k = self._gram(Z)
        with torch.no_grad():
            lam_min, _, u_min, u_max = F.extreme_eigh(
                S.detach(),
                rtol=self.rtol,
                num_iters=self.num_iters,
                tol=self.tol,
                v0_min=self._warm(self.u_min, S),
                v0_max=self._warm(self.u_max, S),
            )
            self._remember("u_min", u_min)
            self._remember("u_max", u_max)
        return ops.r_ill(S, lam_min, u_min, k)


class RWell(_SpectralRegularizer):
    """``R_well(Z^T Z) = sigma_max^2/2 - ||Z^T Z||_F^2/(2k)``: keeps probing well-conditioned.

    Args as ``RIll`` (no ``rtol``: only the top eigenpair is needed).
    """

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        S, k = self._gram(Z)
        with torch.no_grad():
            lam_max, u_max = F.top_eigh(
                S.detach(), num_iters=self.num_iters, tol=self.tol, v0=self._warm(self.u_max, S)
            )
            self._remember("u_max", u_max)
        return ops.r_well(S, lam_max, u_max, k)
