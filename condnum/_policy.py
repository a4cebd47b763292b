"""The eigen-solvers' policy values, as the portable path reads them.

Each name is the C++ constant of the CPU kernels without its ``k`` prefix, in upper case
(``kSkiRental`` -> ``SKI_RENTAL``), with the same value; python_tests/test_policy.py reads
the C++ sources and checks that they agree. Values that the C++ code writes inline carry
their own comment.
"""

from __future__ import annotations

import math

import torch

# ---------------------------------------------------------------- acceptance and stopping
#: Steps before the first convergence check (a Ritz value of a 2x2 T is rarely converged).
FIRST_CHECK = 3
#: Plain Lanczos is trusted for lam_min only while kappa * eps(S) * this stays below tol:
#: rounding in S v perturbs the Ritz values by ~ eps ||S||.
ROUNDING_SLACK = 4.0
#: Plain Lanczos may spend this fraction of the shift-and-invert cost on the bottom end
#: after lam_max has converged ...
SKI_RENTAL = 0.6
#: ... judging its progress by the error bound's decay over this many steps.
RATE_WINDOW = 6
#: The restart check's start vector: pseudo-random stream 1 (stream 0 starts every solve).
CHECK_STREAM = 1
#: A breakdown (invariant Krylov space): beta <= BREAKDOWN * sqrt(d) * eps * ||T||.
BREAKDOWN = 10.0  # inline in lanczos.cpp

# ---------------------------------------------------------------- shift-and-invert
#: Rounding floor of a float64 Krylov basis: FLOOR_SLACK * eps64 * max |Ritz value|.
FLOOR_SLACK = 16.0
#: Cholesky shift tau = max(rtol, TAU_D_EPS * d * eps64) * lam_max.
TAU_D_EPS = 8.0  # inline in extreme_eigh.cpp

# ---------------------------------------------------------------- input checks and scaling
#: S is accepted as symmetric when max|S - S^T| <= this * max|S| (about sqrt(eps)).
SYMMETRY_RTOL = {torch.float32: 3.5e-4, torch.float64: 1.5e-8}
#: S is rescaled by a power of two when max|S| = f * 2^e, f in [0.5, 1), has |e| above this.
RANGE_EXPONENT_LIMIT = {torch.float32: 40, torch.float64: 256}  # inline in checks.cpp

# ---------------------------------------------------------------- edges of the numerical range
#: R_ill = 1 / max(D, ILL_FLOOR * eps(S) * ||S||_F^2 / (2k)): D at rounding level or below
#: (kappa = 1, or k above the number of eigenvalues) gives a large finite value.
ILL_FLOOR = 64.0


def indefinite_floor(dtype: torch.dtype) -> float:
    """Eigenvalues down to ``-indefinite_floor(S.dtype) * lam_max`` are rounding (a Gram matrix
    formed in S's dtype): plain Lanczos' indefiniteness test, and how far the Cholesky shift
    tau may grow (10x per failed factorisation) before S is declared indefinite. sqrt(eps),
    inline in extreme_eigh.cpp."""
    return math.sqrt(torch.finfo(dtype).eps)
