"""Fake (meta) kernels and autograd for the ``torch.ops.condnum`` ops.

The C++ kernels (csrc/) register the ops and their CPU/CUDA implementations; this
module makes them traceable (``torch.compile``, ``opcheck``) and differentiable, to every
order (``condnum._second_order``). Fake kernels check shapes and dtypes in the same order as
the C++ checks.
"""

from __future__ import annotations

import torch

from condnum import _second_order

HALF = (torch.float16, torch.bfloat16)
_FLOAT = (torch.float32, torch.float64)
ops = torch.ops.condnum


def fail(op: str, msg: str) -> None:
    raise ValueError(f"condnum.{op}: {msg}")


def check_matrix(t: torch.Tensor, op: str, arg: str, allow_half: bool = False) -> None:
    if t.dim() != 2:
        fail(op, f"{arg} must be a 2-D matrix, got a {t.dim()}-D tensor of shape {list(t.shape)}")
    if t.numel() == 0:
        fail(op, f"{arg} must not be empty, got shape {list(t.shape)}")
    allowed = _FLOAT + HALF if allow_half else _FLOAT
    if t.dtype not in allowed:
        names = "float16, bfloat16, float32 or float64" if allow_half else "float32 or float64"
        fail(op, f"{arg} must be {names}, got {t.dtype}")


def check_square(S: torch.Tensor, op: str, arg: str = "S") -> None:
    check_matrix(S, op, arg)
    if S.shape[0] != S.shape[1]:
        fail(op, f"{arg} must be square, got shape {list(S.shape)}")


def resolve_k(S: torch.Tensor, k: int | None, op: str) -> int:
    """The regularizers' ``k``: ``d`` when None, else a positive int (ValueError naming ``op``)."""
    if k is None:
        return S.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"condnum.{op}: k must be a positive int, got {k!r}")
    if k <= 0:
        raise ValueError(f"condnum.{op}: k must be positive, got {k}")
    return k


def _check_same(a: torch.Tensor, b: torch.Tensor, op: str, arg_a: str, arg_b: str) -> None:
    if a.device != b.device:
        fail(op, f"{arg_a} and {arg_b} must be on the same device, got {a.device} and {b.device}")
    if a.dtype != b.dtype:
        fail(op, f"{arg_a} and {arg_b} must have the same dtype, got {a.dtype} and {b.dtype}")


def check_vector_for(v: torch.Tensor | None, S: torch.Tensor, op: str, arg: str) -> None:
    if v is None:
        return
    if v.dim() != 1 or v.shape[0] != S.shape[0]:
        fail(op, f"{arg} must have shape ({S.shape[0]},), got {list(v.shape)}")
    _check_same(v, S, op, arg, "S")


def check_budget(num_iters: int, tol: float, op: str) -> None:
    if not num_iters >= 1:
        fail(op, f"num_iters must be >= 1, got {num_iters}")
    if not (tol >= 0 and tol < 1):
        fail(op, f"tol must be in (0, 1), or 0 for a fixed budget of num_iters steps, got {tol}")


def check_spectral_operands(S, lam, u, k, op: str, lam_arg: str, u_arg: str) -> None:
    check_square(S, op)
    if not k > 0:
        fail(op, f"k must be positive, got {k}")
    if lam.dim() != 0:
        fail(op, f"{lam_arg} must be 0-dim, got shape {list(lam.shape)}")
    check_vector_for(u, S, op, u_arg)
    _check_same(S, lam, op, "S", lam_arg)


# ----------------------------------------------------------------------------- fake kernels


@torch.library.register_fake("condnum::gram")
def _gram_fake(Z):
    check_matrix(Z, "gram", "Z", allow_half=True)
    dtype = torch.float32 if Z.dtype in HALF else Z.dtype
    return Z.new_empty((Z.shape[1], Z.shape[1]), dtype=dtype)


def check_covariance(theta: torch.Tensor, K: torch.Tensor) -> None:
    check_matrix(theta, "covariance", "theta")
    check_square(K, "covariance", "K")
    _check_same(theta, K, "covariance", "theta", "K")
    if K.shape[0] != theta.shape[0]:
        fail(
            "covariance",
            f"K must be (D, D) for theta of shape (D, d), got K {list(K.shape)} and theta "
            f"{list(theta.shape)}",
        )


@torch.library.register_fake("condnum::covariance")
def _covariance_fake(theta, K):
    check_covariance(theta, K)
    return theta.new_empty((theta.shape[1], theta.shape[1]))


@torch.library.register_fake("condnum::extreme_eigh")
def _extreme_eigh_fake(S, num_iters, rtol, tol, v0_min, v0_max, op="extreme_eigh"):
    check_square(S, op)
    check_budget(num_iters, tol, op)
    if not (rtol >= 0 and rtol < 1):
        fail(op, f"rtol must be in [0, 1), got {rtol}")
    check_vector_for(v0_max, S, op, "v0_max")
    check_vector_for(v0_min, S, op, "v0_min")
    d = S.shape[0]
    err = S.new_empty((), dtype=torch.float64)
    return S.new_empty(()), S.new_empty(()), S.new_empty((d,)), S.new_empty((d,)), err


@torch.library.register_fake("condnum::floored_min")
def _floored_min_fake(S, num_iters, rtol, tol, v0_min, v0_max):
    *eigh, err = _extreme_eigh_fake(S, num_iters, rtol, tol, v0_min, v0_max, op="floored_min")
    return (*eigh, err, S.new_empty((), dtype=torch.bool))


@torch.library.register_fake("condnum::top_eigh")
def _top_eigh_fake(S, num_iters, tol, v0):
    check_square(S, "top_eigh")
    check_budget(num_iters, tol, "top_eigh")
    check_vector_for(v0, S, "top_eigh", "v0")
    return S.new_empty(()), S.new_empty((S.shape[0],)), S.new_empty((), dtype=torch.float64)


@torch.library.register_fake("condnum::r_ill")
def _r_ill_fake(S, lam_min, u_min, k):
    check_spectral_operands(S, lam_min, u_min, k, "r_ill", "lam_min", "u_min")
    return S.new_empty(())


@torch.library.register_fake("condnum::r_well")
def _r_well_fake(S, lam_max, u_max, k):
    check_spectral_operands(S, lam_max, u_max, k, "r_well", "lam_max", "u_max")
    return S.new_empty(())


@torch.library.register_fake("condnum::_r_ill_backward")
def _r_ill_backward_fake(grad, S, r, lam_min, u_min, k):
    check_spectral_operands(S, lam_min, u_min, k, "_r_ill_backward", "lam_min", "u_min")
    return torch.empty_like(S)


@torch.library.register_fake("condnum::_r_well_backward")
def _r_well_backward_fake(grad, S, lam_max, u_max, k):
    check_spectral_operands(S, lam_max, u_max, k, "_r_well_backward", "lam_max", "u_max")
    return torch.empty_like(S)


# ----------------------------------------------------------------------------- autograd
# gram: S = Z^T Z  =>  dZ = Z (G + G^T)


def _gram_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gram_backward(ctx, grad):
    (Z,) = ctx.saved_tensors
    G = grad + grad.mT
    return (Z.to(G.dtype) @ G).to(Z.dtype)


torch.library.register_autograd("condnum::gram", _gram_backward, setup_context=_gram_setup)


# covariance: S = theta^T K theta, K symmetric  =>  dtheta = K theta (G + G^T), dK = theta G theta^T


def _covariance_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _covariance_backward(ctx, grad):
    theta, K = ctx.saved_tensors
    grad_theta = (K @ theta) @ (grad + grad.mT) if ctx.needs_input_grad[0] else None
    grad_K = theta @ grad @ theta.mT if ctx.needs_input_grad[1] else None
    return grad_theta, grad_K


torch.library.register_autograd(
    "condnum::covariance", _covariance_backward, setup_context=_covariance_setup
)


# extreme_eigh / top_eigh: d lam = u^T dS u (first-order perturbation); eigenvectors
# and error bounds are not differentiable (marked so: they contribute no gradient). In the
# gradient g u u^T, u is differentiable in S (condnum._second_order): higher derivatives.


def _extreme_eigh_setup(ctx, inputs, output):
    lam_min, lam_max, u_min, u_max, err = output
    ctx.mark_non_differentiable(u_min, u_max, err)
    ctx.save_for_backward(inputs[0], lam_min, lam_max, u_min, u_max)


def _extreme_eigh_backward(ctx, g_min, g_max, _gu_min, _gu_max, _gerr):
    S, lam_min, lam_max, u_min, u_max = ctx.saved_tensors
    _, u_min = _second_order.eigenpair(S, lam_min, u_min)
    _, u_max = _second_order.eigenpair(S, lam_max, u_max)
    grad = g_min * torch.outer(u_min, u_min) + g_max * torch.outer(u_max, u_max)
    return grad, None, None, None, None, None


torch.library.register_autograd(
    "condnum::extreme_eigh", _extreme_eigh_backward, setup_context=_extreme_eigh_setup
)


def _top_eigh_setup(ctx, inputs, output):
    lam_max, u_max, err = output
    ctx.mark_non_differentiable(u_max, err)
    ctx.save_for_backward(inputs[0], lam_max, u_max)


def _top_eigh_backward(ctx, g_max, _gu_max, _gerr):
    S, lam_max, u_max = ctx.saved_tensors
    _, u_max = _second_order.eigenpair(S, lam_max, u_max)
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


# The regularizers' backward ops, differentiated once more (Hessian-vector products).


def _r_ill_backward_setup(ctx, inputs, output):
    grad, S, r, lam_min, u_min, k = inputs
    ctx.k = k
    ctx.save_for_backward(grad, S, r, lam_min, u_min)


torch.library.register_autograd(
    "condnum::_r_ill_backward",
    _second_order.r_ill_backward_vjp,
    setup_context=_r_ill_backward_setup,
)


def _r_well_backward_setup(ctx, inputs, output):
    grad, S, lam_max, u_max, k = inputs
    ctx.k = k
    ctx.save_for_backward(grad, S, lam_max, u_max)


torch.library.register_autograd(
    "condnum::_r_well_backward",
    _second_order.r_well_backward_vjp,
    setup_context=_r_well_backward_setup,
)
