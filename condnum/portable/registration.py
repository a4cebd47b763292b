"""Which implementation serves the ``torch.ops.condnum`` ops: native kernels or portable.

The portable implementation is registered once for ``CompositeExplicitAutograd``, so it
serves every device without a kernel of its own (CUDA in a CPU-only build, XPU); the meta
device keeps the fake kernels. The solvers and the regularizers work in float64 on the
input's device (the shift-and-invert factor, the Ritz vectors, the regularizers'
coefficients, the ``err`` output): on a device without float64 (MPS) they raise a
``TypeError`` that says so and names the remedy, instead of failing inside a solve. ``gram``
and ``covariance`` form their products in the input's dtype there.

A *backend* then decides, for the devices that do have native kernels, which one runs:

- ``"native"``: the C++ kernels (CPU, and CUDA when built with it);
- ``"portable"``: the portable implementation on every device;
- ``"auto"`` (the default): native on the CPU, portable on CUDA, whose kernels have not yet
  been verified on hardware.

The choice comes from ``CONDNUM_BACKEND`` (``auto``, ``native`` or ``portable``) at import
time and from ``condnum.backend(name)`` as a context manager. It overrides the dispatcher's
kernel for the CPU/CUDA keys (``torch.library.Library.impl(..., allow_override=True)``;
leaving it destroys that registration, which restores the C++ kernel), so it is
process-wide, not thread-local: switch between calls, never while another thread runs a
condnum op. Compiled graphs call the op through the dispatcher and follow the switch.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from condnum.portable import eigh, fixed_budget, products, regularizers

BACKENDS = ("auto", "native", "portable")
ENV = "CONDNUM_BACKEND"


def _extreme_eigh(S, num_iters: int, rtol: float, tol: float, v0_min, v0_max):
    """tol = 0: a fixed budget of num_iters steps without host synchronisation."""
    if tol == 0:
        return fixed_budget.extreme_eigh(S, num_iters, rtol, v0_min, v0_max)
    return eigh.extreme_eigh(S, num_iters, rtol, tol, v0_min, v0_max)


def _floored_min(S, num_iters: int, rtol: float, tol: float, v0_min, v0_max):
    """tol = 0: a fixed budget of num_iters steps without host synchronisation."""
    if tol == 0:
        return fixed_budget.floored_min(S, num_iters, rtol, v0_min, v0_max)
    return eigh.floored_min(S, num_iters, rtol, tol, v0_min, v0_max)


def _top_eigh(S, num_iters: int, tol: float, v0):
    """tol = 0: a fixed budget of num_iters steps without host synchronisation."""
    if tol == 0:
        return fixed_budget.top_eigh(S, num_iters, v0)
    return eigh.top_eigh(S, num_iters, tol, v0)


@functools.cache
def _has_float64(device: torch.device) -> bool:
    """Whether ``device`` can hold float64 tensors (MPS cannot)."""
    try:
        torch.zeros((), dtype=torch.float64, device=device)
    except (RuntimeError, TypeError):
        return False
    return True


def _on_float64_device(name: str, fn):
    """``fn`` behind a check that its first argument's device has float64."""

    @functools.wraps(fn)
    def checked(x: torch.Tensor, *args):
        if not _has_float64(x.device):
            raise TypeError(
                f"condnum.{name.lstrip('_')}: the eigen-solvers and the regularizers work in "
                f"float64 on the input's device, and {x.device.type} has no float64; move the "
                "input to the CPU (condnum's native kernels; gradients flow back through "
                "`.cpu()`) or to a device with float64 (CUDA)"
            )
        return fn(x, *args)

    return checked


_PORTABLE = {
    "gram": products.gram,
    "covariance": products.covariance,
    "extreme_eigh": _extreme_eigh,
    "floored_min": _floored_min,
    "top_eigh": _top_eigh,
    "r_ill": regularizers.r_ill,
    "_r_ill_backward": regularizers.r_ill_backward,
    "r_well": regularizers.r_well,
    "_r_well_backward": regularizers.r_well_backward,
}
# The products reach float64 only where torch may lower float32 matmuls, or to symmetrise K.
_PRODUCTS = ("gram", "covariance")
#: op name -> portable implementation.
IMPLEMENTATIONS = {
    name: fn if name in _PRODUCTS else _on_float64_device(name, fn)
    for name, fn in _PORTABLE.items()
}

_composite = torch.library.Library("condnum", "IMPL")
for _name, _fn in IMPLEMENTATIONS.items():
    _composite.impl(_name, _fn, "CompositeExplicitAutograd")

_active = "native"
_override: torch.library.Library | None = None


def _overridden_keys(name: str) -> list[str]:
    """The dispatch keys whose native kernels the portable implementation replaces."""
    cuda = ["CUDA"] if torch.ops.condnum._built_with_cuda() else []
    return {"native": [], "auto": cuda, "portable": ["CPU", *cuda]}[name]


def check_name(name: object, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"condnum.backend: {where} must be one of {BACKENDS}, got {name!r}")
    return name  # type: ignore[return-value]


def activate(name: str) -> None:
    """Makes ``name`` the active backend (process-wide)."""
    global _active, _override
    check_name(name, "the backend")
    if _override is not None:
        _override._destroy()  # the C++ kernels serve these keys again
        _override = None
    keys = _overridden_keys(name)
    if keys:
        _override = torch.library.Library("condnum", "IMPL")
        with warnings.catch_warnings():
            # torch warns (once) that a registered kernel is being overridden: that is the point
            warnings.filterwarnings("ignore", message=".*Overriding a previously registered kernel")
            warnings.filterwarnings("ignore", message="Warning only once for all operators")
            for key in keys:
                for op_name, fn in IMPLEMENTATIONS.items():
                    _override.impl(op_name, fn, key, allow_override=True)
    _active = name


def active() -> str:
    return _active


def activate_from_environment() -> None:
    activate(check_name(os.environ.get(ENV, "auto"), f"${ENV}"))
