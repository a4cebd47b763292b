"""The bottom of the numerical range by shift-and-invert Lanczos in float64, portable.

Usually through a Cholesky factor of S + tau I, tau = max(rtol, TAU_D_EPS d eps64) lam_max
(``torch.linalg.cholesky_ex``, then two ``torch.linalg.solve_triangular`` per step):
eigenvalues below the threshold rtol * lam_max map to the top of that spectrum,
(1/(2 tau), 1/tau], so the wanted one is the largest Ritz value theta whose
lam = 1/theta - tau exceeds the threshold. When the spectrum reaches down near a threshold
well above rounding level, an LDL^T factor of S - rtol lam_max I
(``torch.linalg.ldl_factor_ex``) is used instead: the wanted eigenvalue is then the top of
the positive part. The same decisions as the CPU kernel.

Host synchronisation: one copy per factorisation (its info) and per Lanczos step.
Cost: d^3/3 (the factorisation) + O(m d^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from condnum import _policy
from condnum._ops import fail
from condnum.portable.lanczos import (
    Acceptance,
    Lanczos,
    Ritz,
    pair_operator,
    pseudo_random_unit,
    rounding_floor,
    run_with_check,
)

EPS64 = torch.finfo(torch.float64).eps


@dataclass
class Bottom:
    lam: float = math.nan
    u: torch.Tensor | None = None  # float64
    err: float = math.inf  # relative error bound
    converged: bool = False
    crowded: bool = False  # many Ritz values just below the threshold: the target is interior
    steps: int = 0
    interior: bool = False  # some Ritz values map below the threshold
    floor_limited: bool = False  # rounding (rounding_floor) alone exceeds tol


class InvertCheck:
    """The restart check of a shift-and-invert run (condnum.portable.eigh._Check explains
    it; the CPU kernel's InvertCheck): a second run from an independent pseudo-random start
    alongside the first, accepted by the first run's rule. ``wanted(check)``: the index of
    its wanted Ritz value (< 0: none yet); ``accepted(check, pair)``: whether that pair
    meets tol."""

    def __init__(self, ck: Lanczos, wanted, accepted) -> None:
        self.ck, self.wanted, self.accepted = ck, wanted, accepted
        self.ok = Acceptance()
        self.c: Ritz | None = None
        self.decided = False

    def __call__(self, first_done: bool) -> bool:
        if self.decided:
            return True
        ck = self.ck
        m = ck.size
        if m < _policy.FIRST_CHECK and ck.can_step:
            return False
        i = self.wanted(ck)
        if i < 0:
            return False
        self.c = ck.ritz(i)
        self.decided = ck.invariant or self.ok(self.accepted(ck, self.c), m)
        return self.decided

    def refutes(self, r: Ritz, lz: Lanczos) -> bool:
        """Whether the check's pair is above r, the first run's accepted pair, by more than
        both bounds (the wanted value may be interior, so neither is a one-sided bound):
        the first had settled on a neighbour, and the check's pair is the more extreme."""
        c = self.c
        return c is not None and c.value - r.value > max(r.bound, rounding_floor(lz)) + max(
            c.bound, rounding_floor(self.ck)
        )


def _runs(solve, d: int, num_iters: int, start: torch.Tensor):
    """(first run, its check, their pair operator) on the inverse operator ``solve`` ((d, k)
    -> (d, k) columns): the first from ``start``, the check from an independent
    pseudo-random start."""

    def apply(v: torch.Tensor) -> torch.Tensor:
        return solve(v[:, None])[:, 0]

    lz = Lanczos(apply, d, num_iters, torch.float64, start.device)
    ck = Lanczos(apply, d, num_iters, torch.float64, start.device)
    lz.start(start)
    ck.start(pseudo_random_unit(d, torch.float64, start.device, _policy.CHECK_STREAM))
    return lz, ck, pair_operator(apply, solve, start.device, torch.float64)


def shifted64(W: torch.Tensor, shift: float) -> torch.Tensor:
    A = W.double().clone()
    A.diagonal().add_(shift)
    return A


def shifted_cholesky(W: torch.Tensor, lam_max: float, tau: float, op: str = "extreme_eigh"):
    """(L, tau): the lower Cholesky factor of S + tau I. A Gram matrix built in S's dtype may
    be indefinite by rounding, down to indefinite_floor * lam_max: tau grows 10x per failed
    factorisation up to that level before S is declared indefinite."""
    max_tau = max(tau, _policy.indefinite_floor(W.dtype) * lam_max)
    while True:
        L, info = torch.linalg.cholesky_ex(shifted64(W, tau))
        if info.item() == 0:
            return L, tau
        if not tau < max_tau:
            fail(
                op,
                "S must be positive semi-definite, but the Cholesky factorisation of "
                f"S + tau*I failed for tau up to {tau:g} (lam_max = {lam_max:g})",
            )
        tau *= _policy.TAU_GROWTH


def cholesky_bottom(W, lam_max, rtol, tol, num_iters, start, tau) -> Bottom:
    """Lanczos on (S + tau I)^{-1}; the wanted Ritz value is the largest one whose
    lam = 1/theta - tau is above the threshold rtol * lam_max."""
    L, tau = shifted_cholesky(W, lam_max, tau)
    return invert_bottom(L, tau, rtol * lam_max, tol, num_iters, start)


def invert_bottom(L, tau, threshold, tol, num_iters, start) -> Bottom:
    """Lanczos on (S + tau I)^{-1} = (L L^T)^{-1}: the wanted Ritz value is the largest one
    whose lam = 1/theta - tau is above the threshold. A negative tau = -threshold (the
    factor of S - threshold I, which exists only when every eigenvalue is above it) wants
    the top."""
    d = L.shape[0]
    all_above = threshold + tau <= 0
    mu_threshold = math.inf if all_above else 1.0 / (threshold + tau)
    detect_crowding = not all_above and tau <= 8 * threshold

    def solve(X: torch.Tensor) -> torch.Tensor:  # torch.cholesky_solve copies L per call
        Y = torch.linalg.solve_triangular(L, X, upper=False)
        return torch.linalg.solve_triangular(L.mT, Y, upper=True)

    lz, ck, apply2 = _runs(solve, d, num_iters, start)

    def wanted(z: Lanczos = lz) -> int:
        return z.size - 1 if all_above else z.count_below(mu_threshold) - 1

    def error(r: Ritz, z: Lanczos = lz) -> float:  # |d lam| = |d theta| / theta^2
        bound = max(r.bound, rounding_floor(z))
        return bound / (r.value * r.value) / (1.0 / r.value - tau)

    converged = crowded = False
    ok = Acceptance()
    last_above = -1  # Ritz values above the wanted one at the previous step

    def first_ended() -> bool:
        nonlocal converged, crowded, last_above
        m = lz.size
        if m < _policy.FIRST_CHECK and lz.can_step:
            return False
        i = wanted()
        if i < 0:
            return not lz.can_step
        r = lz.ritz(i)
        same = m - 1 - i == last_above
        last_above = m - 1 - i
        # An invariant space ends the run, converged only if rounding allows.
        if (lz.invariant and error(r) <= tol) or ok(error(r) <= tol and same, m):
            converged = True
            return True
        if lz.invariant:
            return True
        # Ritz values above mu_threshold are eigenvalues below the threshold; when several
        # map close below it, the wanted one is deep inside the Krylov spectrum: give up
        # early for the LDL^T route (not for a wide shift, which maps a null space there).
        if (
            detect_crowding
            and m >= 16
            and m - 1 - i >= 4
            and lz.value(i + 1) < 4 * mu_threshold / 3
        ):
            crowded = True
            return True
        return not lz.can_step

    check = InvertCheck(ck, wanted, lambda z, c: error(c, z) <= tol)
    run_with_check(lz, ck, apply2, first_ended, lambda: converged and lz.size < d, check)
    out = Bottom(crowded=crowded, steps=lz.size)
    i = wanted()
    if i < 0:
        return out
    r = lz.ritz(i)
    if converged and lz.size < d and check.refutes(r, lz):
        c = check.c
        u = ck.ritz_vector(c, torch.float64)
        return _from_pair(out, u, 1.0 / c.value - tau, error(c, ck), tol)
    out.interior = i < lz.size - 1
    out.lam = 1.0 / r.value - tau
    out.u = lz.ritz_vector(r, torch.float64)
    out.err = error(r)
    out.converged = converged or out.err <= tol
    out.floor_limited = rounding_floor(lz) / (r.value * r.value) / out.lam > tol
    return out


def ldl_bottom(W, lam_max, rtol, tol, num_iters, start) -> Bottom:
    """Lanczos on (S - sigma I)^{-1}, sigma = the threshold, through an LDL^T factor:
    eigenvalues above sigma map to the positive part, the wanted one to its top."""
    d = W.shape[0]
    sigma = rtol * lam_max
    out = Bottom()
    LD, pivots, info = torch.linalg.ldl_factor_ex(shifted64(W, -sigma), hermitian=True)
    if info.item() != 0:  # an eigenvalue equals sigma: keep Cholesky's answer
        return out

    def solve(X: torch.Tensor) -> torch.Tensor:
        return torch.linalg.ldl_solve(LD, pivots, X, hermitian=True)

    lz, ck, apply2 = _runs(solve, d, num_iters, start)

    def error(r: Ritz, z: Lanczos = lz) -> float:
        bound = max(r.bound, rounding_floor(z))
        return bound / (r.value * r.value) / (sigma + 1.0 / r.value)

    converged = False
    ok = Acceptance()

    def first_ended() -> bool:
        nonlocal converged
        m = lz.size
        if m < _policy.FIRST_CHECK and lz.can_step:
            return False
        r = lz.ritz(m - 1)
        if r.value > 0 and error(r) <= tol and (lz.invariant or ok(True, m)):
            converged = True
            return True
        return not lz.can_step

    check = InvertCheck(ck, lambda z: z.size - 1, lambda z, c: c.value > 0 and error(c, z) <= tol)
    run_with_check(lz, ck, apply2, first_ended, lambda: converged and lz.size < d, check)
    r = lz.ritz(lz.size - 1)
    out.steps = lz.size
    if r.value <= 0:
        return out
    if converged and lz.size < d and check.refutes(r, lz):
        c = check.c
        u = ck.ritz_vector(c, torch.float64)
        return _from_pair(out, u, sigma + 1.0 / c.value, error(c, ck), tol)
    out.lam = sigma + 1.0 / r.value
    out.u = lz.ritz_vector(r, torch.float64)
    out.err = error(r)
    out.converged = converged or out.err <= tol
    return out


def _from_pair(out: Bottom, u: torch.Tensor, lam: float, err: float, tol: float) -> Bottom:
    """``out`` with the restart check's pair: lam, its unit vector u and error bound."""
    out.lam = lam
    out.u = u
    out.err = err
    out.converged = err <= tol
    return out


def shift_invert_bottom(W, lam_max, rtol, tol, num_iters, start, theta0, theta_range) -> Bottom:
    """The bottom of the numerical range. theta0: plain Lanczos' bottom Ritz value (an upper
    bound on the smallest eigenvalue); theta_range: its smallest Ritz value above the
    threshold (an estimate of the wanted eigenvalue)."""
    start64 = start.double()
    d = W.shape[0]
    threshold = rtol * lam_max
    # Shifting to the threshold itself pays when the spectrum reaches down near it (the
    # wanted eigenvalue is then the top of the positive part); when the threshold is at
    # rounding level or far below theta0, Cholesky of S + tau I is cheaper and as good.
    near_threshold = (
        threshold > 8.0 * d * EPS64 * lam_max
        and theta0 < 16.0 * threshold
        and theta0 > threshold / 64.0
    )
    ldl_ok = W.device.type in ("cpu", "cuda")  # torch.linalg.ldl_factor's devices
    out = Bottom()
    tried_ldl = False
    if near_threshold and ldl_ok:
        out = ldl_bottom(W, lam_max, rtol, tol, num_iters, start64)
        tried_ldl = True
    if not out.converged:
        tau = _policy.cholesky_shift(rtol, d, lam_max)
        chol = cholesky_bottom(W, lam_max, rtol, tol, num_iters, start64, tau)
        wide_tried = False

        def with_wide_shift(best: Bottom) -> Bottom:
            """A null space maps to ~1/tau, far above the wanted 1/(lam + tau), and rounding
            at that scale can swamp it: shift by ~lam / 4 instead (lam from the best solve
            so far, else plain Lanczos' estimate; one more factorisation)."""
            nonlocal wide_tried
            guess = best.lam if best.lam > _policy.WIDE_MARGIN * tau else theta_range
            if not guess > _policy.WIDE_MARGIN * tau:
                return best
            wide_tried = True
            start_wide = best.u if best.u is not None else start64
            wide = cholesky_bottom(
                W, lam_max, rtol, tol, num_iters, start_wide, _policy.WIDE_SHIFT * guess
            )
            if not math.isnan(wide.lam) and (
                math.isnan(best.lam) or wide.converged or wide.err < best.err
            ):
                return wide
            return best

        if chol.floor_limited or math.isnan(chol.lam):
            chol = with_wide_shift(chol)
        if (
            ldl_ok
            and not tried_ldl
            and (chol.crowded or (not chol.converged and chol.interior and rtol > 0))
        ):
            start_ldl = chol.u if chol.u is not None else start64
            alt = ldl_bottom(W, lam_max, rtol, tol, num_iters, start_ldl)
            if not math.isnan(alt.lam) and (alt.converged or not chol.converged):
                chol = alt
        # The LDL^T run is rounding-limited in the same way when S has a null space: its
        # eigenvalues map to about -1/threshold there. Then the wide shift, from its estimate.
        if not chol.converged and not wide_tried:
            chol = with_wide_shift(chol)
        if math.isnan(out.lam) or chol.converged or chol.err < out.err:
            out = chol
    if math.isnan(out.lam):
        fail(
            "extreme_eigh",
            f"found no eigenvalue above rtol * lam_max (rtol = {rtol:g}) in {out.steps} "
            "shift-and-invert Lanczos steps: S is numerically zero, rtol is too large, or "
            f"num_iters = {num_iters} is too small",
        )
    return out
