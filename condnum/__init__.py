"""condnum: model immunization by condition-number control (Zheng et al., ICML 2025).

Load order: torch, then the compiled ops (``condnum._C``), then the Python
registrations (fake kernels and autograd) in ``condnum._ops``.
"""

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

__version__ = "0.1.0"


def built_with_cuda() -> bool:
    """True when the CUDA kernels were compiled into this build."""
    return bool(torch.ops.condnum._built_with_cuda())


__all__ = [
    "NumericalRangeWarning",
    "RIll",
    "RWell",
    "built_with_cuda",
    "default_kappa_target",
    "functional",
    "reference",
]
