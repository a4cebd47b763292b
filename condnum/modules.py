"""``RIll`` and ``RWell``: the regularizers as ``torch.nn.Module`` loss terms on features.

Called on features ``Z`` of shape (N, d) they return ``r_ill(Z^T Z)`` / ``r_well(Z^T Z)``
(no 1/N), so the paper's lambda values carry over. When N < d the batch Gram ``Z^T Z`` is
rank-deficient: its d - N zero eigenvalues belong to the batch, not to the data, so the
regularizers act on its N nonzero eigenvalues, those of the N x N ``Z Z^T``, with ``k``
defaulting to N (one :class:`NumericalRangeWarning` says so). The eigenvectors of the last
call are kept as buffers (like ``spectral_norm`` keeps ``u``) and warm-start the next solve.

``RIll`` is built to be trained to success. Its ``sigma_min`` is floored at the numerical
floor ``rtol * sigma_max`` (``edge="floor"``, :func:`condnum.functional.floored_min`), so
``D(S) > 0`` and the value is continuous where eigenvalues leave the measurable range.
With ``kappa_target`` it stops pushing (zero gradient, value kept) once
``kappa >= kappa_target`` or kappa has reached the measurable ceiling ``1/rtol``. float32
(and half) features whose kappa comes within ``PROMOTE_MARGIN`` of what a float32 Gram
resolves are solved in float64 from then on (the Gram of the same features, formed in
float64; ``self.float64`` tells), to float32's tolerance unless ``tol`` is given (the value
is returned in float32). Each module warns once per kind of event (a rank-deficient
batch, an eigenvalue at the floor). Host synchronisation: one small device-to-host copy per
``RIll`` call (kappa and the floor flag, for the warnings and the float64 switch); none under
``torch.compile``.

``normalize=True`` applies the regularizer to the trace-normalised Gram ``m S / tr(S)``
(mean eigenvalue 1 over the m eigenvalues solved): kappa is unchanged, but value and
gradient no longer depend on the scale of ``Z``, so a loss that rewards growing ``Z``
(``R_ill`` falls like ``1/||S||^2``) cannot make the features grow without bound.

With ``process_group`` (data-parallel training), the Gram of the global batch
``sum_r Z_r^T Z_r`` is all-reduced over the group, so kappa is estimated from every rank's
samples and each rank's gradient w.r.t. its own features is the global loss's
(see ``condnum.distributed``).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from condnum import functional as F
from condnum._ops import check_square, ops, resolve_k
from condnum.defaults import dtype_rtol
from condnum.distributed import all_reduce_gram

__all__ = ["NumericalRangeWarning", "RIll", "RWell", "default_kappa_target"]

_EPS32 = torch.finfo(torch.float32).eps
_EPS64 = torch.finfo(torch.float64).eps
#: float32 solves move to float64 once kappa is within this factor of float32's ceiling
#: (there a float32 Gram's rounding moves lam_min by ~10 %).
PROMOTE_MARGIN = 0.1


class NumericalRangeWarning(UserWarning):
    """A regularizer met the edge of what its dtype resolves (rank deficiency, the floor)."""


def default_kappa_target(dtype: torch.dtype, n: int) -> float:
    """``min(1/eps(dtype), 0.01 / (n eps64))``: where ``RIll`` stops pushing by default.

    Beyond ``1/eps`` of the features' dtype (half types count as float32, their Gram's
    dtype) a gradient step of a probe in that dtype cannot move along the bottom
    eigenvector at all; ``0.01 / (n eps64)`` keeps the target two decades inside what a
    float64 solve of an ``n x n`` matrix resolves at the default ``rtol``.
    """
    eps = _EPS64 if dtype == torch.float64 else _EPS32
    return min(1.0 / eps, 0.01 / (n * _EPS64))


class _SpectralRegularizer(nn.Module):
    u_min: torch.Tensor
    u_max: torch.Tensor

    def __init__(
        self,
        k: int | None = None,
        *,
        input: str = "features",
        normalize: bool = False,
        num_iters: int | None = None,
        tol: float | None = None,
        process_group=None,
    ) -> None:
        super().__init__()
        if input not in ("features", "gram"):
            raise ValueError(f"input must be 'features' or 'gram', got {input!r}")
        if k is not None:
            resolve_k(torch.empty(1, 1), k, type(self).__name__)
        self.k, self.input, self.normalize = k, input, normalize
        self.num_iters, self.tol, self.process_group = num_iters, tol, process_group
        self.register_buffer("u_min", torch.zeros(0))
        self.register_buffer("u_max", torch.zeros(0))
        self._warned: set[str] = set()

    def _warn_once(self, kind: str, msg: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(f"condnum.{type(self).__name__}: {msg}", NumericalRangeWarning, 3)

    def _gram(self, Z: torch.Tensor, float64: bool = False) -> tuple[torch.Tensor, int]:
        """The matrix to solve (d x d, or N x N when N < d) and k (default: its size).

        ``float64``: form it in float64 from the same features.
        """
        name = type(self).__name__
        if Z.dim() != 2:
            raise ValueError(f"condnum.{name}: expected a 2-D input, got shape {list(Z.shape)}")
        if Z.numel() == 0:  # before Z.mT below: the message shows the shape as passed
            raise ValueError(
                f"condnum.{name}: expected a non-empty input, got shape {list(Z.shape)}"
            )
        if self.input == "gram":
            check_square(Z, name)
        if float64:
            Z = Z.double()
        if self.input == "gram":
            S = Z
        elif self.process_group is not None:  # the global batch's d x d Gram
            S = all_reduce_gram(F.gram(Z), self.process_group)
        elif Z.shape[0] < Z.shape[1]:
            if self.k is None:  # a k passed by the caller says they know
                self._warn_once(
                    "rank",
                    f"a batch of N = {Z.shape[0]} < d = {Z.shape[1]} features has a "
                    f"rank-deficient Gram; the regularizer acts on its N nonzero eigenvalues "
                    f"(Z Z^T, k = N by default). Batches of N >= d see the full spectrum.",
                )
            S = F.gram(Z.mT)
        else:
            S = F.gram(Z)
        if self.normalize:
            S = S * (S.shape[0] / S.diagonal().sum())
        k = resolve_k(S, self.k, name)
        return S, k

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
        return f"k={self.k}, input={self.input!r}, normalize={self.normalize}"


class RIll(_SpectralRegularizer):
    """``R_ill(Z^T Z) = 1 / (||Z^T Z||_F^2/(2k) - sigma_min^2/2)``: makes probing ill-conditioned.

    Args:
        k: default the size of the matrix solved (d, or N when N < d).
        rtol: numerical-range threshold (default ``n eps`` of the solve's dtype, n its size).
        edge: ``"floor"`` (default; ``sigma_min = max(lam_1, rtol sigma_max)``) or
            ``"range"`` (the smallest eigenvalue above ``rtol sigma_max``); see
            :func:`condnum.functional.r_ill`.
        kappa_target: the term stops pushing once kappa reaches it (default
            :func:`default_kappa_target`; ``math.inf``: only at the measurable ceiling).
        input: ``"features"`` (Z of shape (N, d)) or ``"gram"`` (S of shape (d, d)).
        normalize: act on the trace-normalised Gram (scale-free; module docstring).
        num_iters, tol: the eigen-solver's budget and accuracy.
        process_group: use the global batch's Gram in data-parallel training.

    After each call (outside ``torch.compile``) ``self.last`` holds ``kappa`` (as
    ``R_ill`` sees it: ``sigma_max / sigma_min``), ``saturated`` (an eigenvalue at the
    floor), ``active`` (the term still pushes), ``float64`` (the solve's precision) and
    ``tol`` (the solve's tolerance; None: the default of its dtype).
    """

    def __init__(
        self,
        k: int | None = None,
        rtol: float | None = None,
        *,
        edge: F.Edge = "floor",
        kappa_target: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(k, **kwargs)
        if edge not in ("floor", "range"):
            raise ValueError(f"condnum.RIll: edge must be 'floor' or 'range', got {edge!r}")
        if rtol is not None and not 0 <= rtol < 1:
            raise ValueError(f"condnum.RIll: rtol must be in [0, 1), got {rtol}")
        if kappa_target is not None and not kappa_target > 1:
            raise ValueError(f"condnum.RIll: kappa_target must be > 1, got {kappa_target}")
        self.rtol, self.edge, self.kappa_target = rtol, edge, kappa_target
        self.float64 = False  # switched on (for good) when float32 no longer resolves kappa
        self.last: dict[str, float | bool] = {}

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        promoted = self.float64 and Z.dtype != torch.float64
        S, k = self._gram(Z, float64=promoted)
        n = S.shape[0]
        rtol = dtype_rtol(S) if self.rtol is None else self.rtol
        target = (
            default_kappa_target(Z.dtype, n) if self.kappa_target is None else self.kappa_target
        )
        with torch.no_grad():
            warm = {"v0_min": self._warm(self.u_min, S), "v0_max": self._warm(self.u_max, S)}
            # a promoted solve keeps float32's tolerance: its value is returned in float32
            tol = F.DEFAULT_TOL[torch.float32] if promoted and self.tol is None else self.tol
            opts = {"num_iters": self.num_iters, "tol": tol}
            if self.edge == "floor":
                m = F.floored_min(S, rtol, **opts, **warm)
                lam, u, lam_max, u_min, u_max, saturated = m
            else:
                lam, lam_max, u_min, u_max = F.extreme_eigh(S, rtol=rtol, **opts, **warm)
                u, saturated = u_min, torch.zeros((), dtype=torch.bool, device=S.device)
            self._remember("u_min", u_min)
            self._remember("u_max", u_max)
            kappa = lam_max.double() / lam.double()
            active = (kappa < target) & ~saturated
        r = ops.r_ill(S, lam, u, k)
        if promoted:  # the value keeps the dtype it had before the switch
            r = r.to(torch.float32)
        if not torch.compiler.is_compiling() and S.device.type != "meta":
            self._observe(kappa, saturated, active, S.dtype, n, target, rtol, tol)
        return torch.where(active, r, r.detach())

    def _observe(self, kappa, saturated, active, dtype, n, target, rtol, tol) -> None:
        """Host side: record the call, switch float32 solves to float64, warn once per event."""
        kappa_h, sat, act = torch.stack([kappa, saturated.double(), active.double()]).tolist()
        self.last = dict(
            kappa=kappa_h, saturated=bool(sat), active=bool(act), float64=self.float64, tol=tol
        )
        ceiling32 = 1.0 / (n * _EPS32)  # what a float32 S resolves
        if dtype == torch.float32 and (self.rtol is None or self.rtol < 1 / ceiling32):
            near = kappa_h >= PROMOTE_MARGIN * ceiling32
            if (near or sat) and kappa_h < target:
                self.float64 = True  # silent: nothing is lost, the next call is exact again
                return
        if sat:
            self._warn_once(
                "floor",
                f"an eigenvalue reached the numerical floor rtol * sigma_max (rtol = {rtol:.2g}, "
                f"{dtype}): kappa = {kappa_h:.3g} is the measurable ceiling; R_ill is evaluated "
                f"there and stops pushing while an eigenvalue stays at the floor",
            )


class RWell(_SpectralRegularizer):
    """``R_well(Z^T Z) = sigma_max^2/2 - ||Z^T Z||_F^2/(2k)``: keeps probing well-conditioned.

    Args as ``RIll`` (no ``rtol``, ``edge`` or ``kappa_target``: only the top eigenpair is
    needed, and ``R_well >= 0`` for any spectrum when ``k`` is at most the size solved).
    """

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        S, k = self._gram(Z)
        with torch.no_grad():
            lam_max, u_max = F.top_eigh(
                S.detach(), num_iters=self.num_iters, tol=self.tol, v0=self._warm(self.u_max, S)
            )
            self._remember("u_max", u_max)
        return ops.r_well(S, lam_max, u_max, k)
