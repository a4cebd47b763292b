"""The eigen-solvers' policy values, as the portable path reads them.

Each name is the constant of csrc/solver_policy.h (the policy of the CPU and CUDA kernels)
without its ``k`` prefix, in upper case (``kSkiRental`` -> ``SKI_RENTAL``), with the same
value; python_tests/test_backends.py reads the header and checks that they agree. Values
that the header returns from a function (per dtype) are dicts keyed by dtype.
"""

from __future__ import annotations

import math

import torch

# ---------------------------------------------------------------- acceptance and stopping
#: Steps before the first convergence check (a Ritz value of a 2x2 T is rarely converged).
FIRST_CHECK = 3
#: Rounding in S v moves every Ritz value by up to ~ eps ||S||: a Ritz pair's error bound
#: is at least ROUNDING_SLACK * eps * max |theta| (product_floor), so plain Lanczos is
#: trusted for lam_min only while kappa * eps(S) * this stays below tol.
ROUNDING_SLACK = 4.0
#: Plain Lanczos may spend this fraction of the shift-and-invert cost on the bottom end
#: after lam_max has converged ...
SKI_RENTAL = 0.6
#: ... judging its progress by the error bound's decay over this many steps:
RATE_WINDOW = 6
#: a stalled bound still predicts a finite number of steps at this decay rate per step ...
MIN_RATE = 1e-3
#: ... and it gives up when it predicts more than this many times the remaining allowance.
RATE_MARGIN = 2.0
#: log(bound / value) of a bound of exactly 0 (an invariant space) uses this bound.
LOG_BOUND_FLOOR = 1e-300
#: The restart check's start vector: pseudo-random stream 1 (stream 0 starts every solve).
CHECK_STREAM = 1
#: Warm starts: their normalised sum plus START_RANDOM_WEIGHT times a unit pseudo-random
#: vector, so that no eigenvector is missed when a warm start is orthogonal to it.
START_RANDOM_WEIGHT = 0.1
#: A breakdown (invariant Krylov space): beta <= BREAKDOWN * sqrt(d) * eps * ||T||.
BREAKDOWN = 10.0

# ---------------------------------------------------------------- shift-and-invert
#: Rounding floor of a float64 Krylov basis: FLOOR_SLACK * eps64 * max |Ritz value|.
FLOOR_SLACK = 16.0
#: Cholesky shift tau = max(rtol, TAU_D_EPS * d * eps64) * lam_max ...
TAU_D_EPS = 8.0
#: ... grown by this factor per failed factorisation, up to indefinite_floor(S.dtype) * lam_max.
TAU_GROWTH = 10.0
#: A null space that swamps the bound by rounding: the solve is redone with the shift
#: WIDE_SHIFT * lam, when lam > WIDE_MARGIN * tau.
WIDE_SHIFT = 0.25
WIDE_MARGIN = 4.0

# ---------------------------------------------------------------- input checks and scaling
#: S is accepted as symmetric when max|S - S^T| <= this * max|S| (about sqrt(eps)).
SYMMETRY_RTOL = {torch.float32: 3.5e-4, torch.float64: 1.5e-8}
#: S is rescaled by a power of two when max|S| = f * 2^e, f in [0.5, 1), has |e| above this.
RANGE_EXPONENT_LIMIT = {torch.float32: 40, torch.float64: 256}

# ---------------------------------------------------------------- edges of the numerical range
#: R_ill = 1 / max(D, ILL_FLOOR * eps(S) * ||S||_F^2 / (2k)): D at rounding level or below
#: (kappa = 1, or k above the number of eigenvalues) gives a large finite value.
ILL_FLOOR = 64.0


def product_floor(max_abs_theta: float, eps: float) -> float:
    """The floor under a Ritz pair's error bound from the rounding of the products S v
    (eps of their arithmetic): ROUNDING_SLACK * eps * max |theta| (policy::product_floor)."""
    return ROUNDING_SLACK * eps * max_abs_theta


def with_output_rounding(err: float, dtype: torch.dtype) -> float:
    """A nonzero relative error bound is at least eps(dtype) / 2, the rounding of the
    returned eigenvalue to S's dtype; 0 (S = 0, exact) stays 0 (policy::with_output_rounding)."""
    return max(err, 0.5 * torch.finfo(dtype).eps) if err > 0 else err


def check_refutes_top(first: float, first_bound: float, check: float) -> bool:
    """The restart check's top Ritz value rises above the first run's accepted lam_max by
    more than its bound: the first had settled on a lower eigenvalue
    (policy::check_refutes_top)."""
    return check - first > first_bound


def cholesky_shift(rtol: float, d: int, lam_max: float) -> float:
    """tau = max(rtol, TAU_D_EPS * d * eps64) * lam_max (policy::cholesky_shift)."""
    return max(rtol, TAU_D_EPS * d * torch.finfo(torch.float64).eps) * lam_max


def indefinite_floor(dtype: torch.dtype) -> float:
    """Eigenvalues down to ``-indefinite_floor(S.dtype) * lam_max`` are rounding (a Gram matrix
    formed in S's dtype): plain Lanczos' indefiniteness test, and how far the Cholesky shift
    tau may grow (TAU_GROWTH per failed factorisation) before S is declared indefinite.
    sqrt(eps) (policy::proves_indefinite, policy::max_cholesky_shift)."""
    return math.sqrt(torch.finfo(dtype).eps)
