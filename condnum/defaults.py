"""Default thresholds and solver budgets: one place for each rule.

``sigma_min`` is taken over a *numerical range*: the smallest eigenvalue above
``rtol * lambda_max``. Two defaults for ``rtol`` serve two jobs:

- :func:`dtype_rtol` ``= d * eps(S.dtype)`` (torch.linalg.matrix_rank's rule): the ops
  (:mod:`condnum.functional`, :mod:`condnum.modules`, :mod:`condnum.reference`), whose
  ``S`` may be float32 and whose range is what its dtype resolves.
- :data:`KAPPA_RTOL` ``= 1e-12``: measuring kappa in float64 (:mod:`condnum.metrics`,
  ``rule="relative"``) and the immunization loops. Above float64 rounding of Gram
  matrices (1e-17..1e-15 relative on real data), below the genuine spectra of raw pixels
  (MNIST digits reach 1e-12); kappa above 1e12 cannot be reported under it.

The authors' code uses an absolute rule instead (``metrics.kappa(rule="paper")``): the
eigenvalues of ``S + PAPER_JITTER I`` above :data:`PAPER_JITTER`.
"""

from __future__ import annotations

import torch

__all__ = [
    "DEFAULT_NUM_ITERS",
    "DEFAULT_TOL",
    "KAPPA_RTOL",
    "LOOP_TOL",
    "PAPER_JITTER",
    "dtype_rtol",
]

#: Lanczos budget per call (capped at d); each end stops earlier once converged.
DEFAULT_NUM_ITERS = 128
#: Relative accuracy asked of each extreme eigenvalue, by dtype of S.
DEFAULT_TOL = {torch.float32: 1e-4, torch.float64: 1e-7}
#: Default ``rtol`` of kappa measured in float64 and of the immunization loops.
KAPPA_RTOL = 1e-12
#: The jitter and threshold of the paper's rule (the authors' ``lambda_diag``).
PAPER_JITTER = 1e-6
#: Relative accuracy asked of the Lanczos eigenvalues inside the immunization loops. Kappa
#: only steers accept/reject decisions there (reported kappas come from float64
#: ``eigvalsh``), so a solve that stops short of it is tolerated.
LOOP_TOL = 1e-6


def dtype_rtol(S: torch.Tensor) -> float:
    """``d * eps(S.dtype)``: the ops' default ``rtol``; eigenvalues below ``rtol * lambda_max``
    count as numerically zero."""
    return S.shape[-1] * torch.finfo(S.dtype).eps
