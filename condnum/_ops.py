"""Fake (meta) kernels and autograd for the ``torch.ops.condnum`` ops.

The C++ kernels (csrc/) register the ops and their CPU/CUDA implementations; this
module makes them traceable (``torch.compile``, ``opcheck``) and differentiable. Fake
kernels check shapes and dtypes in the same order as the C++ checks.
"""

from __future__ import annotations

import torch

_HALF = (torch.float16, torch.bfloat16)
_FLOAT = (torch.float32, torch.float64)
ops = torch.ops.condnum


def _fail(op: str, msg: str) -> None:
    raise ValueError(f"condnum.{op}: {msg}")


def _check_matrix(t: torch.Tensor, op: str, arg: str, allow_half: bool = False) -> None:
    if t.dim() != 2:
        _fail(op, f"{arg} must be a 2-D matrix, got a {t.dim()}-D tensor of shape {list(t.shape)}")
    if t.numel() == 0:
        _fail(op, f"{arg} must not be empty, got shape {list(t.shape)}")
    allowed = _FLOAT + _HALF if allow_half else _FLOAT
    if t.dtype not in allowed:
        _fail(op, f"{arg} must be float32 or float64, got {t.dtype}")


def _check_square(S: torch.Tensor, op: str, arg: str = "S") -> None:
    _check_matrix(S, op, arg)
    if S.shape[0] != S.shape[1]:
        _fail(op, f"{arg} must be square, got shape {list(S.shape)}")


# ----------------------------------------------------------------------------- fake kernels


@torch.library.register_fake("condnum::gram")
def _gram_fake(Z):
    _check_matrix(Z, "gram", "Z", allow_half=True)
    dtype = torch.float32 if Z.dtype in _HALF else Z.dtype
    return Z.new_empty((Z.shape[1], Z.shape[1]), dtype=dtype)


@torch.library.register_fake("condnum::covariance")
def _covariance_fake(theta, K):
    _check_matrix(theta, "covariance", "theta")
    _check_square(K, "covariance", "K")
    return theta.new_empty((theta.shape[1], theta.shape[1]))


@torch.library.register_fake("condnum::extreme_eigh")
def _extreme_eigh_fake(S, num_iters, rtol, tol, v0_min, v0_max):
    _check_square(S, "extreme_eigh")
    d = S.shape[0]
    err = S.new_empty((), dtype=torch.float64)
    return S.new_empty(()), S.new_empty(()), S.new_empty((d,)), S.new_empty((d,)), err


@torch.library.register_fake("condnum::top_eigh")
def _top_eigh_fake(S, num_iters, tol, v0):
    _check_square(S, "top_eigh")
    return S.new_empty(()), S.new_empty((S.shape[0],)), S.new_empty((), dtype=torch.float64)


@torch.library.register_fake("condnum::r_ill")
def _r_ill_fake(S, lam_min, u_min, k):
    _check_square(S, "r_ill")
    return S.new_empty(())


@torch.library.register_fake("condnum::r_well")
def _r_well_fake(S, lam_max, u_max, k):
    _check_square(S, "r_well")
    return S.new_empty(())


@torch.library.register_fake("condnum::_r_ill_backward")
def _r_ill_backward_fake(grad, S, r, lam_min, u_min, k):
    return torch.empty_like(S)


@torch.library.register_fake("condnum::_r_well_backward")
def _r_well_backward_fake(grad, S, lam_max, u_max, k):
    return torch.empty_like(S)


# ----------------------------------------------------------------------------- autograd
# gram: S = Z^T Z  =>  dZ = Z (G + G^T)


def _gram_setup(ctx, inputs, output):
    (ctx.Z,) = inputs


def _gram_backward(ctx, grad):
    Z = ctx.Z
    G = grad + grad.mT
    return (Z.to(G.dtype) @ G).to(Z.dtype)


torch.library.register_autograd("condnum::gram", _gram_backward, setup_context=_gram_setup)


# covariance: S = theta^T K theta, K symmetric  =>  dtheta = K theta (G + G^T), dK = theta G theta^T


def _covariance_setup(ctx, inputs, output):
    ctx.theta, ctx.K = inputs


def _covariance_backward(ctx, grad):
    theta, K = ctx.theta, ctx.K
    grad_theta = (K @ theta) @ (grad + grad.mT) if ctx.needs_input_grad[0] else None
    grad_K = theta @ grad @ theta.mT if ctx.needs_input_grad[1] else None
    return grad_theta, grad_K


torch.library.register_autograd(
    "condnum::covariance", _covariance_backward, setup_context=_covariance_setup
)


# extreme_eigh / top_eigh: d lam = u^T dS u (first-order perturbation); eigenvectors
# and error bounds are not differentiable (marked so: they contribute no gradient).


def _extreme_eigh_setup(ctx, inputs, output):
    _, _, u_min, u_max, err = output
    ctx.mark_non_differentiable(u_min, u_max, err)
    ctx.save_for_backward(u_min, u_max)


def _extreme_eigh_backward(ctx, g_min, g_max, _gu_min, _gu_max, _gerr):
    u_min, u_max = ctx.saved_tensors
    grad = g_min * torch.outer(u_min, u_min) + g_max * torch.outer(u_max, u_max)
    return grad, None, None, None, None, None


torch.library.register_autograd(
    "condnum::extreme_eigh", _extreme_eigh_backward, setup_context=_extreme_eigh_setup
)


def _top_eigh_setup(ctx, inputs, output):
    _, u_max, err = output
    ctx.mark_non_differentiable(u_max, err)
    ctx.save_for_backward(u_max)


def _top_eigh_backward(ctx, g_max, _gu_max, _gerr):
    (u_max,) = ctx.saved_tensors
    return g_max * torch.outer(u_max, u_max), None, None, None


torch.library.register_autograd(
    "condnum::top_eigh", _top_eigh_backward, setup_context=_top_eigh_setup
)


def _r_ill_setup(ctx, inputs, output):
    S, lam_min, u_min, k = inputs
    ctx.k = k
    ctx.save_for_backward(S, output, lam_min, u_min)


def _r_ill_backward(ctx, grad):
    S, r, lam_min, u_min = ctx.saved_tensors
    return ops._r_ill_backward(grad, S, r, lam_min, u_min, ctx.k), None, None, None


torch.library.register_autograd("condnum::r_ill", _r_ill_backward, setup_context=_r_ill_setup)


def _r_well_setup(ctx, inputs, output):
    S, lam_max, u_max, k = inputs
    ctx.k = k
    ctx.save_for_backward(S, lam_max, u_max)


def _r_well_backward(ctx, grad):
    S, lam_max, u_max = ctx.saved_tensors
    return ops._r_well_backward(grad, S, lam_max, u_max, ctx.k), None, None, None


torch.library.register_autograd("condnum::r_well", _r_well_backward, setup_context=_r_well_setup)
