"""The regularizers' gradients with respect to ``S`` and ``kappa(S)``, from one of two backends.

``"condnum"`` uses the library's compiled ops (Lanczos extreme eigenpairs with warm starts,
fused analytic gradients); ``"reference"`` the pure-torch formulation of
:mod:`condnum.reference` (``torch.linalg.eigvalsh`` + autograd), the authors' way. Both
return, for a symmetric PSD ``S`` (d, d) in float64::

    dR_well/dS = sigma_max v v^T - S / k
    dR_ill/dS  = (sigma_min u u^T - S / k) / D(S)^2,   D(S) = ||S||_F^2/(2k) - sigma_min^2/2

with ``sigma_min`` the smallest eigenvalue above ``rtol * sigma_max`` (the numerical range).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Literal

import torch

from condnum import reference
from condnum.defaults import KAPPA_RTOL, LOOP_TOL

__all__ = ["Implementation", "Spectral"]

#: Which implementation computes the regularizers' gradients and kappa in the loops: the
#: compiled ops (``"condnum"``) or the pure-torch :mod:`condnum.reference` (eigvalsh + autograd).
Implementation = Literal["condnum", "reference"]
#: Solves inside the loops ask for LOOP_TOL; one that stops short of it is tolerated and
#: the core's accuracy warning silenced.
_SHORTFALL = r"condnum\.(extreme_eigh|top_eigh): eigenvalues did not reach tol"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SHORTFALL, category=UserWarning)
        yield


class Spectral:
    """Gradients of ``R_well``/``R_ill`` at ``S`` and ``kappa(S)``, warm-started per matrix.

    Args:
        backend: ``"condnum"`` (compiled ops) or ``"reference"`` (eigvalsh + autograd).
        rtol: numerical-range threshold for ``sigma_min`` and kappa (default
            :data:`condnum.defaults.KAPPA_RTOL`).
        k: the regularizers' ``k`` (default: the dimension of ``S``).
    """

    def __init__(
        self, backend: Implementation = "condnum", rtol: float | None = None, k: int | None = None
    ) -> None:
        if backend not in ("condnum", "reference"):
            raise ValueError(f"backend must be 'condnum' or 'reference', got {backend!r}")
        self.backend, self.k = backend, k
        self.rtol = KAPPA_RTOL if rtol is None else rtol
        if backend == "condnum":
            import condnum

            self._well = condnum.RWell(k, input="gram", tol=LOOP_TOL)
            # The loops run their own kappa target and rank handling: the authors' range
            # rule, never switched off by the module.
            self._ill = condnum.RIll(
                k, self.rtol, input="gram", tol=LOOP_TOL, edge="range", kappa_target=math.inf
            )
            self._warm: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def covariance(self, theta: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """``theta^T K theta``."""
        if self.backend == "condnum":
            from condnum import functional

            return functional.covariance(theta, K)
        return theta.T @ K @ theta

    def r_well(self, S: torch.Tensor) -> torch.Tensor:
        """``R_well(S)``, differentiable w.r.t. ``S``."""
        with _quiet():
            if self.backend == "condnum":
                return self._well(S)
            return reference.r_well(S, self.k, self.rtol)

    def r_ill(self, S: torch.Tensor) -> torch.Tensor:
        """``R_ill(S)``, differentiable w.r.t. ``S``."""
        with _quiet():
            if self.backend == "condnum":
                return self._ill(S)
            return reference.r_ill(S, self.k, self.rtol, edge="range")

    def _grad(self, which: str, S: torch.Tensor) -> tuple[float, torch.Tensor]:
        S = S.detach().requires_grad_(True)
        value = self.r_well(S) if which == "well" else self.r_ill(S)
        (G,) = torch.autograd.grad(value, S)
        value = float(value.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"R_{which}(S) = {value}")
        return value, G

    def grad_well(self, S: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``(R_well(S), dR_well/dS)``."""
        return self._grad("well", S)

    def grad_ill(self, S: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``(R_ill(S), dR_ill/dS)``; ``FloatingPointError`` where ``R_ill`` is infinite."""
        return self._grad("ill", S)

    def log_kappa(self, S: torch.Tensor) -> torch.Tensor:
        """``log kappa(S)``, differentiable w.r.t. ``S`` through the extreme eigenvalues."""
        if self.backend == "reference":
            lam_min, lam_max = reference.extreme_eigvals(S, self.rtol)
        else:
            from condnum import functional

            with _quiet():
                lam_min, lam_max, _, _ = functional.extreme_eigh(S, rtol=self.rtol, tol=LOOP_TOL)
        return lam_max.log() - lam_min.log()

    def kappa(self, S: torch.Tensor, name: str = "") -> float:
        """``kappa(S)`` over the numerical range; ``name`` keys the warm start (e.g. "P", "H")."""
        S = S.detach()
        if self.backend == "reference":
            return float(reference.condition_number(S, self.rtol))
        from condnum import functional

        v0 = self._warm.get(name)
        with _quiet():
            lam_min, lam_max, u_min, u_max = functional.extreme_eigh(
                S, rtol=self.rtol, tol=LOOP_TOL, v0_min=v0[0] if v0 else None,
                v0_max=v0[1] if v0 else None,
            )  # fmt: skip
        if name:
            self._warm[name] = (u_min, u_max)
        return float(lam_max / lam_min)
