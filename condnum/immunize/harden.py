"""Hardening an immunized linear extractor against diagonal preconditioning.

kappa is invariant under an orthogonal change of the feature basis, ``theta -> theta Q``::

    (theta Q)^T K (theta Q) = Q^T (theta^T K theta) Q     (same eigenvalues, rotated)

so (i), (ii), RIR and the primary model (with ``omega -> Q^T omega``) are unchanged. A
diagonal preconditioner is not invariant: per-feature standardization, Adam and RMSprop
rescale each feature, which undoes the part of the ill-conditioning that is aligned with
the feature axes (an immunized ``theta`` built from ``K_P``'s eigenvectors has much of
it there). After a Haar-random rotation every eigen-direction of ``H_H`` is spread over
all features, so each diagonal entry of ``Q^T H_H Q`` is close to ``trace(H_H) / d``: the
attacker's diagonal rescaling is then close to a multiple of the identity and leaves
kappa as it is.

Orthogonal mixing cannot help against attackers that are themselves rotation-equivariant
and use curvature (conjugate gradient, L-BFGS, Newton, the closed-form solve, whitening).
"""

from __future__ import annotations

import dataclasses

import torch

from condnum.immunize.result import LinearImmunization

__all__ = ["HARDENINGS", "harden", "orthogonal_mix", "random_orthogonal"]

#: Hardenings :func:`harden` applies: ``"orthogonal-mix"`` (:func:`orthogonal_mix`, the
#: default of the House Prices, MNIST and digits reproductions) or ``"none"`` (the
#: immunizer's extractor unchanged, for comparison with the paper).
HARDENINGS = ("orthogonal-mix", "none")


def random_orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    """A Haar-distributed orthogonal (d, d) float64 matrix: ``Q R = G`` for a seeded Gaussian
    ``G``, with the signs of ``diag(R)`` moved into ``Q`` (which makes ``Q`` Haar)."""
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    gen = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return Q * torch.where(torch.diagonal(R) < 0, -1.0, 1.0)


def orthogonal_mix(result: LinearImmunization, seed: int = 0) -> LinearImmunization:
    """``theta Q``, ``bias Q``, ``omega -> Q^T omega`` with ``Q = random_orthogonal(d, seed)``.

    Features ``X theta Q + bias Q`` give the same kappas, RIR and primary predictions
    (up to rounding) as ``result``; see the module doc for what it changes.
    ``settings`` gain ``orthogonal_mix_seed``.
    """
    Q = random_orthogonal(result.theta.shape[1], seed)
    return dataclasses.replace(
        result,
        theta=result.theta @ Q,
        bias=None if result.bias is None else result.bias @ Q,
        omega=None if result.omega is None else Q.T @ result.omega,
        settings={**result.settings, "orthogonal_mix_seed": seed},
    )


def harden(
    result: LinearImmunization, hardening: str = "orthogonal-mix", seed: int = 0
) -> LinearImmunization:
    """``result`` after ``hardening`` (one of :data:`HARDENINGS`): :func:`orthogonal_mix` with
    ``seed``, or ``result`` itself for ``"none"``."""
    if hardening not in HARDENINGS:
        raise ValueError(f"hardening must be one of {HARDENINGS}, got {hardening!r}")
    return orthogonal_mix(result, seed) if hardening == "orthogonal-mix" else result
