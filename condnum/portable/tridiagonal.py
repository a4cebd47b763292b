"""Eigenpairs of a symmetric tridiagonal T (alpha on the diagonal, beta off it) in O(m).

The Lanczos checks want one or two Ritz pairs of T and counts of Ritz values below a
point, not the whole spectrum. These are the CPU kernel's routines (csrc/cpu/lanczos.cpp),
called on the host through ``condnum._C``, so every backend's convergence checks run the
same code: a Sturm count, bisection for the i-th eigenvalue (Newton's method on
det(x I - T) first for the smallest and largest, given a hint), and inverse iteration for
its vector. A check runs at every Lanczos step, where a Python loop over T would cost more
than the step's own BLAS work.

``alpha`` (m values) and ``beta`` (at least m - 1; the rest, such as beta_m, is ignored)
are float64 sequences or arrays. A hint ``(value, bound)`` is what eigenvalue i was at an
earlier check of the same Lanczos run, at the same end of the spectrum; it is verified
before use, so a wrong one costs time, not accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from condnum import _C


def _bytes(alpha: Sequence[float], beta: Sequence[float]) -> tuple[bytes, bytes]:
    a = np.ascontiguousarray(alpha, dtype=np.float64)
    b = np.ascontiguousarray(beta, dtype=np.float64)[: max(a.size - 1, 0)]
    return a.tobytes(), b.tobytes()


def sturm_count(alpha: Sequence[float], beta: Sequence[float], x: float) -> int:
    """Number of eigenvalues of T below x: the negative pivots of the LDL^T factorisation
    of T - x I, a pivot below pivmin = tiny * max(1, beta^2) in magnitude counting as
    negative (LAPACK's rule)."""
    return _C._sturm_count(*_bytes(alpha, beta), float(x))


def eigenvalue(
    alpha: Sequence[float],
    beta: Sequence[float],
    i: int,
    hint: tuple[float, float] | None = None,
) -> float:
    """The i-th smallest eigenvalue of T (i = 0 the smallest), to about machine precision."""
    value, bound = hint if hint is not None else (0.0, -1.0)
    return _C._ritz_value(*_bytes(alpha, beta), i, value, bound)


def eigenpair(
    alpha: Sequence[float],
    beta: Sequence[float],
    i: int,
    hint: tuple[float, float] | None = None,
) -> tuple[float, np.ndarray]:
    """(theta_i, s_i): the i-th smallest eigenvalue of T and its unit eigenvector (m,)."""
    a, b = _bytes(alpha, beta)
    value, bound = hint if hint is not None else (0.0, -1.0)
    theta = _C._ritz_value(a, b, i, value, bound)
    return theta, np.frombuffer(_C._ritz_vector(a, b, theta), dtype=np.float64).copy()
