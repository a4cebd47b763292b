"""The dummy layer: identity forward, gradient times (K + rho I)^-1 backward (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import condnum
from condnum.deep import KInversePreconditioner, precondition, ridge_inverse_apply

RIDGE = 1e-3
#: float64 solves of well-conditioned (ridge 1e-3) systems: rounding only.
SOLVE_RTOL = 1e-10
#: central differences in float64 with step 1e-6: truncation error O(h^2) ~ 1e-12 relative.
FD_RTOL = 1e-6


def _K_plus_ridge(X: torch.Tensor) -> torch.Tensor:
    K = X.T @ X
    return K + RIDGE * K.trace() / K.shape[0] * torch.eye(K.shape[0], dtype=K.dtype)


def _data(n: int = 20, D: int = 6, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, D, generator=g, dtype=torch.float64)
    W = torch.randn(d, D, generator=g, dtype=torch.float64)
    return X, W


def _loss(Z: torch.Tensor) -> torch.Tensor:
    return condnum.RIll()(Z) + 0.5 * condnum.RWell()(Z)


def _finite_difference_grad(f, W: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    G = torch.zeros_like(W)
    for idx in range(W.numel()):
        E = torch.zeros_like(W).view(-1)
        E[idx] = h
        E = E.view_as(W)
        G.view(-1)[idx] = (f(W + E) - f(W - E)) / (2 * h)
    return G


def test_forward_is_identity_and_backward_is_K_inverse_preconditioned_gradient():
    X, W = _data()
    K = X.T @ X
    Wp = W.clone().requires_grad_()
    out = precondition(Wp, K, RIDGE)
    assert torch.equal(out, W)
    _loss(X @ out.T).backward()
    # the gradient of R(X W^T) by central differences, then right-multiplied by (K + rho I)^-1
    with torch.no_grad():
        g_fd = _finite_difference_grad(lambda V: _loss(X @ V.T), W)
    expected = torch.linalg.solve(_K_plus_ridge(X), g_fd.T).T
    torch.testing.assert_close(Wp.grad, expected, rtol=FD_RTOL, atol=0)


def test_ridge_inverse_apply_matches_a_float64_solve_for_any_leading_shape():
    X, _ = _data(n=4, D=6)  # n < D: K singular, only the ridge makes it invertible
    G = torch.randn(3, 2, 6, dtype=torch.float64)
    got = ridge_inverse_apply(G, X.T @ X, RIDGE)
    expected = torch.linalg.solve(_K_plus_ridge(X), G.reshape(-1, 6).T).T.reshape(G.shape)
    torch.testing.assert_close(got, expected, rtol=SOLVE_RTOL, atol=0)
    assert ridge_inverse_apply(G.float(), X.T @ X, RIDGE).dtype == torch.float32


def test_linear_layer_calls_are_each_preconditioned_by_their_own_input_covariance():
    X_P, W = _data(seed=1)
    X_H, _ = _data(seed=2)
    layer = nn.Linear(6, 5, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(W)
    KInversePreconditioner.attach(layer, RIDGE)
    (condnum.RWell()(layer(X_P)) + condnum.RIll()(layer(X_H))).backward()
    # reference: plain autograd per term, each preconditioned by its own K
    Wr = W.clone().requires_grad_()
    (g_P,) = torch.autograd.grad(condnum.RWell()(X_P @ Wr.T), Wr)
    (g_H,) = torch.autograd.grad(condnum.RIll()(X_H @ Wr.T), Wr)
    expected = (torch.linalg.solve(_K_plus_ridge(X_P), g_P.T).T
                + torch.linalg.solve(_K_plus_ridge(X_H), g_H.T).T)  # fmt: skip
    torch.testing.assert_close(layer.parametrizations.weight.original.grad, expected,
                               rtol=SOLVE_RTOL, atol=0)  # fmt: skip


def test_detach_restores_a_plain_linear_layer():
    layer = nn.Linear(6, 5).double()
    W = layer.weight.detach().clone()
    pre = KInversePreconditioner.attach(layer, RIDGE)
    layer(torch.randn(3, 6, dtype=torch.float64))
    pre.detach(layer)
    assert not hasattr(layer, "parametrizations")
    torch.testing.assert_close(layer.weight.detach(), W)
    assert not layer._forward_pre_hooks


def test_bad_input_is_rejected_with_the_argument_named():
    with pytest.raises(ValueError, match="K must be"):
        precondition(torch.zeros(2, 3), torch.eye(4))
    with pytest.raises(ValueError, match="ridge"):
        ridge_inverse_apply(torch.zeros(2, 3), torch.eye(3), 0.0)
    with pytest.raises(ValueError, match="zero trace"):
        ridge_inverse_apply(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="nn.Linear"):
        KInversePreconditioner.attach(nn.Conv2d(1, 1, 1))  # type: ignore[arg-type]
    layer = nn.Linear(3, 2)
    KInversePreconditioner.attach(layer)
    with pytest.raises(RuntimeError, match="no input seen"):
        layer.weight  # noqa: B018
