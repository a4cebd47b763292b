"""Validated inputs of a linear immunization problem and the initial extractors.

A linear (or affine) extractor ``theta`` (D_in, d) gives features ``Z = X theta (+ b)``;
the bad actor's least-squares Hessians are ``H_P = theta^T K_P theta`` and
``H_H = theta^T K_H theta`` with ``K = X^T X`` (float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LinearProblem", "initial_theta", "whitening"]


def check_rows(name: str, X: torch.Tensor) -> torch.Tensor:
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(X).__name__}")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D_in) matrix, got shape {tuple(X.shape)}")
    if not X.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {X.dtype}")
    if not bool(torch.isfinite(X).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return X.detach().double()


@dataclass(frozen=True)
class LinearProblem:
    """Primary rows ``X_P`` (N_P, D_in) with optional targets ``y_P`` (N_P,), harmful rows
    ``X_H`` (N_H, D_in) (harmful labels are never needed), and ``K = X^T X`` of each, float64.
    """

    X_P: torch.Tensor
    X_H: torch.Tensor
    y_P: torch.Tensor | None
    K_P: torch.Tensor
    K_H: torch.Tensor

    @classmethod
    def from_data(
        cls, X_P: torch.Tensor, X_H: torch.Tensor, y_P: torch.Tensor | None = None
    ) -> LinearProblem:
        """Check shapes and values; raises ``ValueError`` naming the offending argument."""
        X_P, X_H = check_rows("X_P", X_P), check_rows("X_H", X_H)
        if X_P.shape[1] != X_H.shape[1]:
            raise ValueError(
                f"X_P and X_H must have the same number of columns D_in, got {X_P.shape[1]} "
                f"and {X_H.shape[1]}"
            )
        if y_P is not None:
            if not isinstance(y_P, torch.Tensor) or y_P.shape != (X_P.shape[0],):
                shape = tuple(y_P.shape) if isinstance(y_P, torch.Tensor) else type(y_P).__name__
                raise ValueError(
                    f"y_P must have shape ({X_P.shape[0]},) like X_P's rows, got {shape}"
                )
            y_P = y_P.detach().double()
            if not bool(torch.isfinite(y_P).all()):
                raise ValueError("y_P contains NaN or Inf")
            if X_P.shape[0] < 2 or float(y_P.std()) == 0.0:
                raise ValueError(
                    "y_P is constant (a dataset with one class?): the primary task has nothing "
                    "to learn"
                )
        K_P, K_H = X_P.T @ X_P, X_H.T @ X_H
        for name, K in (("X_P", K_P), ("X_H", K_H)):
            if float(K.abs().max()) == 0.0:
                raise ValueError(f"{name} is all zeros: its Hessian has no spectrum")
        return cls(X_P, X_H, y_P, K_P, K_H)

    @property
    def d_in(self) -> int:
        return self.X_P.shape[1]


def whitening(K: torch.Tensor, rtol: float = 1e-2) -> torch.Tensor:
    """``(K + rho I)^(-1/2)`` with ``rho = rtol * lambda_max(K)``: ridge (ZCA) whitening.

    Makes ``theta^T K theta = K (K + rho I)^-1`` flat (eigenvalues ``lambda/(lambda+rho)``,
    ~1 above ``rho``), i.e. the minimiser of ``R_well`` up to the ridge, while scaling the
    null space of ``K`` by ``rho^(-1/2)``: directions the primary data never uses are
    amplified relative to the others (``kappa(theta) = sqrt(1 + 1/rtol)`` at most). One
    ``torch.linalg.eigh`` of the (D_in, D_in) ``K``: O(D_in^3) once.
    """
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"whitening rtol must be in (0, 1), got {rtol}")
    lam, U = torch.linalg.eigh(K.double())
    rho = rtol * float(lam[-1])
    return (U * (lam.clamp(min=0.0) + rho).rsqrt()) @ U.T


def initial_theta(
    init: str | torch.Tensor, problem: LinearProblem, *, d: int | None = None, seed: int = 0,
    whiten_rtol: float = 1e-2,
) -> torch.Tensor:  # fmt: skip
    """``theta_0`` (D_in, d), float64.

    ``"identity"`` (d = D_in); ``"random"``: ``nn.Linear``'s default init, entries
    ``U(-1/sqrt(D_in), 1/sqrt(D_in))`` from a generator seeded with ``seed`` (as the
    authors' code); ``"whiten"``: :func:`whitening` of ``K_P``; or a (D_in, d) tensor.
    """
    D = problem.d_in
    if isinstance(init, torch.Tensor):
        if init.ndim != 2 or init.shape[0] != D:
            raise ValueError(f"init theta must be ({D}, d), got shape {tuple(init.shape)}")
        if not bool(torch.isfinite(init).all()):
            raise ValueError("init theta contains NaN or Inf")
        return init.detach().double().clone()
    if init == "identity":
        if d not in (None, D):
            raise ValueError(f"init='identity' needs d = D_in = {D}, got d = {d}")
        return torch.eye(D, dtype=torch.float64)
    if init == "whiten":
        if d not in (None, D):
            raise ValueError(f"init='whiten' needs d = D_in = {D}, got d = {d}")
        return whitening(problem.K_P, whiten_rtol)
    if init == "random":
        gen = torch.Generator().manual_seed(seed)
        bound = D**-0.5
        return (torch.rand(D, d or D, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    raise ValueError(f"init must be 'identity', 'random', 'whiten' or a tensor, got {init!r}")
