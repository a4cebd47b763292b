"""The paper's "dummy layer": identity forward, ``K^-1``-preconditioned backward.

Algorithm 1 updates a linear extractor ``theta`` by ``theta - eta K^-1 grad_theta R`` with
``K = X^T X`` the covariance of the extractor's input. A deep network gets the same step
from one ordinary backward pass by passing the weight through a layer that is the identity
forward and multiplies the incoming gradient by ``(K + rho I)^-1`` backward::

    W' = precondition(W, K)         # forward:  W' = W
    Z  = X W'^T                     # nn.Linear with weight W (d_out, D)
    dL/dW := (dL/dW') (K + rho I)^-1    # backward, K = X^T X (D, D)

``rho = ridge * trace(K) / D`` (the same ridge rule as :func:`condnum.immunize.algorithm1`):
``K`` of real features is singular (N < D, dead units), and the ridge keeps the solve
defined and bounds the step along null directions by ``1 / rho``. The solve is a Cholesky
factorisation of ``K + rho I`` in float64 (or the gradient's dtype when that is float64),
cast back to the gradient's dtype.

:class:`KInversePreconditioner` does this for an ``nn.Linear`` layer: it registers itself
as a parametrization of the layer's weight and records ``K = X^T X`` of each forward's
input, so every call of the layer gets its own covariance (a primary and a harmful forward
are preconditioned by ``K_P^-1`` and ``K_H^-1``, as in Algorithm 1).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["KInversePreconditioner", "precondition", "ridge_inverse_apply"]

#: Default ridge: ``rho = 1e-6 * trace(K) / D``, Algorithm 1's default.
DEFAULT_RIDGE = 1e-6


def _check_covariance(K: torch.Tensor, D: int) -> None:
    if K.shape != (D, D):
        raise ValueError(f"K must be ({D}, {D}) to match the gradient, got {tuple(K.shape)}")
    if not bool(torch.isfinite(K).all()):
        raise ValueError("K contains NaN or Inf")


def ridge_inverse_apply(
    G: torch.Tensor, K: torch.Tensor, ridge: float = DEFAULT_RIDGE
) -> torch.Tensor:
    """``G (K + rho I)^-1`` with ``rho = ridge * trace(K) / D``; ``G`` (..., D), ``K`` (D, D).

    Symmetric ``K``, so this is also ``((K + rho I)^-1 G^T)^T``. Solved by Cholesky in
    float64; the result has ``G``'s dtype. Cost: ``O(D^3 + numel(G) D)``.
    """
    D = G.shape[-1]
    _check_covariance(K, D)
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    K64 = K.detach().double()
    rho = ridge * float(K64.trace()) / D
    if not rho > 0:
        raise ValueError("K has zero trace: no covariance to precondition with")
    L = torch.linalg.cholesky(K64 + rho * torch.eye(D, dtype=K64.dtype, device=K64.device))
    flat = G.detach().double().reshape(-1, D)
    return torch.cholesky_solve(flat.T, L).T.reshape(G.shape).to(G.dtype)


class _Precondition(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W: torch.Tensor, K: torch.Tensor, ridge: float) -> torch.Tensor:
        ctx.save_for_backward(K)
        ctx.ridge = ridge
        return W.view_as(W)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (K,) = ctx.saved_tensors
        return ridge_inverse_apply(grad, K, ctx.ridge), None, None


def precondition(W: torch.Tensor, K: torch.Tensor, ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """Identity on ``W`` (..., D); its gradient becomes ``dL/dW (K + rho I)^-1``.

    ``K`` (D, D) is the symmetric PSD covariance of the input features of the layer that
    uses ``W`` (D its last dimension, as ``nn.Linear.weight``); it gets no gradient.
    """
    _check_covariance(K, W.shape[-1])
    return _Precondition.apply(W, K.detach(), ridge)


class KInversePreconditioner(nn.Module):
    """The dummy layer for ``nn.Linear``: ``weight``'s gradient times ``(K + rho I)^-1``.

    ``KInversePreconditioner.attach(linear, ridge)`` registers the module as a
    parametrization of ``linear.weight`` and a forward pre-hook that stores
    ``K = X^T X`` (X the input flattened to (N, D), float32 or wider) before each call.
    Each call of the layer reads the parametrized weight afresh, so the backward of each
    call uses the ``K`` of that call's input. Remove with
    ``torch.nn.utils.parametrize.remove_parametrizations(linear, "weight")`` (the hook is
    removed by :meth:`detach`).
    """

    K: torch.Tensor

    def __init__(self, in_features: int, ridge: float = DEFAULT_RIDGE) -> None:
        super().__init__()
        if not ridge > 0:
            raise ValueError(f"ridge must be > 0, got {ridge}")
        self.ridge = ridge
        self.register_buffer("K", torch.zeros(in_features, in_features), persistent=False)
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    @classmethod
    def attach(cls, linear: nn.Linear, ridge: float = DEFAULT_RIDGE) -> KInversePreconditioner:
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        pre = cls(linear.in_features, ridge).to(linear.weight.device)
        parametrize.register_parametrization(linear, "weight", pre, unsafe=True)
        pre._hook = linear.register_forward_pre_hook(pre._record)
        return pre

    def detach(self, linear: nn.Linear) -> None:
        """Undo :meth:`attach`: the plain weight (its current value) and no hook."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        parametrize.remove_parametrizations(linear, "weight")

    def _record(self, module: nn.Module, args: tuple) -> None:
        X = args[0].detach().reshape(-1, self.K.shape[0])
        X = X.float() if X.dtype not in (torch.float32, torch.float64) else X
        self.K = X.T @ X

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        if not bool(self.K.any()):
            raise RuntimeError("KInversePreconditioner: no input seen yet (K is zero)")
        return precondition(W, self.K, self.ridge)

    def extra_repr(self) -> str:
        return f"in_features={self.K.shape[0]}, ridge={self.ridge:g}"
