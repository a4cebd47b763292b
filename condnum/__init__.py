"""condnum: model immunization by condition-number control (Zheng et al., ICML 2025).

Load order: torch, then the compiled ops (``condnum._C``), then the Python
registrations (fake kernels and autograd) in ``condnum._ops``, then the portable
implementation (``condnum.portable``) and the backend chosen by ``CONDNUM_BACKEND``.
"""

import contextlib
from collections.abc import Iterator

import torch  # noqa: F401  (the compiled module has no RPATH to torch: load it first)

try:
    from condnum import _C  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "condnum's compiled extension (condnum._C) could not be loaded: "
        f"{err}. Rebuild it against the installed torch with "
        "`pip install --no-build-isolation -e .` from the repository root."
    ) from err

from condnum import (  # noqa: E402
    _ops,  # noqa: E402,F401
    functional,
    reference,
)
from condnum.modules import NumericalRangeWarning, RIll, RWell, default_kappa_target  # noqa: E402
from condnum.portable import registration as _registration  # noqa: E402

_registration.activate_from_environment()

__version__ = "0.1.0"


def built_with_cuda() -> bool:
    """True when the CUDA kernels were compiled into this build."""
    return bool(torch.ops.condnum._built_with_cuda())


@contextlib.contextmanager
def _using(name: str) -> Iterator[str]:
    previous = _registration.active()
    _registration.activate(name)
    try:
        yield name
    finally:
        _registration.activate(previous)


def backend(name: str | None = None):
    """The active backend, or (given ``name``) a context manager that makes it active.

    ``"native"``: the C++ kernels where they exist (CPU; CUDA when built with it);
    ``"portable"``: the implementation on torch operations (``condnum.portable``) on every
    device; ``"auto"``: native on the CPU, portable elsewhere (the default, or
    ``CONDNUM_BACKEND``). Devices without a native kernel always use the portable one.
    The switch is process-wide (the dispatcher's registrations), not thread-local::

        with condnum.backend("portable"):
            lam_min, lam_max, u_min, u_max = condnum.functional.extreme_eigh(S)
    """
    if name is None:
        return _registration.active()
    _registration.check_name(name, "the backend")
    return _using(name)


__all__ = [
    "NumericalRangeWarning",
    "RIll",
    "RWell",
    "backend",
    "built_with_cuda",
    "default_kappa_target",
    "functional",
    "reference",
]
