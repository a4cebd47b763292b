"""A closed-form immunizer: diagonalize both Hessians at once, then mix the features.

With ridged covariances ``K_P' = X_P^T X_P + rho I`` and ``K_H' = X_H^T X_H + rho I``
(``rho = rtol * trace(X_P^T X_P) / D``), the generalized eigenvectors ``V`` of
``K_H' v = mu K_P' v`` satisfy

    V^T K_P' V = I,      V^T K_H' V = diag(mu),

so the extractor ``theta = V Q`` (``Q`` a seeded Haar rotation, :func:`random_orthogonal`)
gives the primary probe a Hessian ``theta^T K_P theta = I - rho theta^T theta``, close to
the identity (kappa ~ 1: every first-order attacker on the primary task converges at
once), and the harmful probe ``Q^T diag(mu) Q - rho theta^T theta``, whose kappa is the
spread of the generalized eigenvalues: for any extractor, ``kappa(theta^T K_H theta) /
kappa(theta^T K_P theta) <= mu_max / mu_min``, and this one attains it.

Against attackers it differs from Algorithm 1's extractors in the shape of the harmful
spectrum: ``mu`` is spread over the whole rank (not a few small eigenvalues beside a
cluster), the case where floating-point conjugate gradient and L-BFGS lose the most to
rounding (:mod:`condnum.attack.bounds`). ``Q`` spreads every eigen-direction over all
features, so per-feature standardization and diagonal preconditioners see a near-identity
diagonal (:mod:`condnum.immunize.harden`). The primary head makes the primary model the
plain least-squares fit (``theta`` is invertible).

Cost: one Cholesky and one symmetric eigendecomposition of a (D, D) matrix.
"""

from __future__ import annotations

import torch

from condnum.immunize.algorithm1 import initial_head
from condnum.immunize.harden import random_orthogonal
from condnum.immunize.problem import check_rows
from condnum.immunize.result import LinearImmunization

__all__ = ["simultaneous_diagonalization"]


def simultaneous_diagonalization(
    X_P: torch.Tensor,
    X_H: torch.Tensor,
    y_P: torch.Tensor | None = None,
    *,
    rtol: float = 1e-6,
    seed: int = 0,
) -> LinearImmunization:
    """``theta = V Q`` from the generalized eigenvectors of ``(K_H', K_P')`` (module doc).

    Args:
        X_P: (N_P, D) primary inputs; X_H: (N_H, D) harmful inputs (any float dtype).
        y_P: (N_P,) primary targets for the head, or None.
        rtol: the ridge ``rho = rtol * trace(K_P) / D`` that makes ``K_P'`` invertible
            (both covariances are singular for real data); > 0.
        seed: seed of the rotation ``Q``.

    Returns:
        a :class:`LinearImmunization` (float64, no bias) whose ``settings`` hold ``rtol``,
        ``seed`` and ``mu_min``/``mu_max``.

    Raises:
        ValueError: bad shapes, NaN/Inf, ``rtol <= 0``, a zero ``X_P``.
    """
    XP, XH = check_rows("X_P", X_P), check_rows("X_H", X_H)
    if XP.shape[1] != XH.shape[1]:
        raise ValueError(f"X_P has {XP.shape[1]} features, X_H {XH.shape[1]}")
    if not rtol > 0:
        raise ValueError(f"rtol must be > 0, got {rtol}")
    D = XP.shape[1]
    K_P = XP.T @ XP
    if not float(K_P.trace()) > 0:
        raise ValueError("X_P is zero: nothing to keep well conditioned")
    rho = rtol * float(K_P.trace()) / D
    eye = torch.eye(D, dtype=torch.float64)
    L = torch.linalg.cholesky(K_P + rho * eye)
    Linv = torch.linalg.solve_triangular(L, eye, upper=False)
    M = Linv @ (XH.T @ XH + rho * eye) @ Linv.T
    mu, U = torch.linalg.eigh((M + M.T) / 2)
    theta = (Linv.T @ U) @ random_orthogonal(D, seed)
    omega = intercept = None
    if y_P is not None:
        if not isinstance(y_P, torch.Tensor) or y_P.shape != (XP.shape[0],):
            raise ValueError(f"y_P must have shape ({XP.shape[0]},) like X_P's rows")
        omega, intercept = initial_head(XP, y_P.double(), theta)
    settings = {"method": "simultaneous diagonalization", "rtol": rtol, "seed": seed,
                "mu_min": float(mu[0]), "mu_max": float(mu[-1])}  # fmt: skip
    return LinearImmunization(theta, None, omega, intercept, settings=settings)
