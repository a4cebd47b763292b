"""Eigenpairs of a symmetric tridiagonal T (alpha on the diagonal, beta off it) in O(m).

The Lanczos checks want one or two Ritz pairs of T and counts of Ritz values below a
point, not the whole spectrum: a Sturm count, bisection for the i-th eigenvalue (LAPACK
``dstebz``, to full relative accuracy) and inverse iteration for its vector (``dstein``),
as the CPU kernel does, in place of a dense O(m^3) ``eigh`` of T at every check.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.linalg import lapack

# Bisection to twice the underflow threshold: each eigenvalue to the relative accuracy that
# T's entries determine (LAPACK's advice for dstebz's abstol).
_ABSTOL = 2 * np.finfo(np.float64).tiny
_BY_VALUE, _BY_INDEX = 1, 2  # dstebz's RANGE = 'V', 'I'


def sturm_count(alpha: Sequence[float], beta: Sequence[float], x: float) -> int:
    """Number of eigenvalues of T below x: the negative pivots of the LDL^T factorisation
    of T - x I with LAPACK's pivmin rule, as ``dstebz`` counts them for the interval
    (lower, x], ``lower`` below T's Gershgorin discs, with no bisection after the count
    (an infinite abstol). A loop over T in Python would cost more than a Lanczos step."""
    a, b = _arrays(alpha, beta)
    radius = float(np.abs(a).max()) + (2 * float(np.abs(b).max()) if b.size else 0.0)
    lower = -2 * radius - np.finfo(np.float64).tiny
    if not x > lower:
        return 0
    if a.size == 1:
        return int(a[0] < x)
    count, _, _, _, info = lapack.dstebz(a, b, _BY_VALUE, lower, x, 0, 0, np.inf, "B")
    if info != 0:
        raise RuntimeError(f"dstebz failed to count an order-{a.size} T below {x:g}: info {info}")
    return int(count)


def _bisect(a: np.ndarray, b: np.ndarray, i: int):
    m, w, iblock, isplit, info = lapack.dstebz(
        a, b, _BY_INDEX, 0.0, 0.0, i + 1, i + 1, _ABSTOL, "B"
    )
    if info != 0 or m != 1:
        raise RuntimeError(f"dstebz failed for eigenvalue {i} of an order-{a.size} T: info {info}")
    return w, iblock, isplit


def _arrays(alpha: Sequence[float], beta: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    m = len(alpha)
    return np.asarray(alpha, dtype=np.float64), np.asarray(beta[: m - 1], dtype=np.float64)


def eigenvalue(alpha: Sequence[float], beta: Sequence[float], i: int) -> float:
    """The i-th smallest eigenvalue of T (i = 0 the smallest), by bisection."""
    if len(alpha) == 1:
        return float(alpha[0])
    return float(_bisect(*_arrays(alpha, beta), i)[0][0])


def eigenpair(alpha: Sequence[float], beta: Sequence[float], i: int) -> tuple[float, np.ndarray]:
    """(theta_i, s_i): the i-th smallest eigenvalue of T and its unit eigenvector (m,),
    by bisection and inverse iteration."""
    if len(alpha) == 1:
        return float(alpha[0]), np.ones(1)
    a, b = _arrays(alpha, beta)
    w, iblock, isplit = _bisect(a, b, i)
    z, info = lapack.dstein(a, b, w[:1], iblock, isplit)
    if info != 0:
        raise RuntimeError(f"dstein did not converge for eigenvalue {i} of an order-{a.size} T")
    return float(w[0]), z[:, 0]
