"""extreme_eigh / top_eigh on torch operations: the CPU kernel's algorithm, any device.

    lam_max = max eig(S),  lam_min = min { lam in eig(S) : lam > rtol * lam_max }
    S: (d, d) float32/float64 -> lam_min, lam_max: (), u_min, u_max: (d,), dtype of S;
    err: () float64, the larger relative error bound of the two eigenvalues.

1. Lanczos on S (in S's dtype, divided by a power of two when its magnitude would make
   squared norms overflow or underflow) from the warm starts plus a fixed pseudo-random
   vector, until lam_max is accepted (bound <= tol |lam| at two consecutive steps). The
   bottom Ritz value of the same Krylov space is pursued while a ski-rental budget (a
   fraction of the shift-and-invert cost) lasts and S is not too ill-conditioned for it.
2. Otherwise shift-and-invert in float64 (condnum.portable.shift_invert).
Each accepted end is checked by a second run from an independent pseudo-random start, in
lockstep with the first (off the CPU, a two-column product or a two-right-hand-side solve
per step; lanczos.pair_operator): it must not find a Ritz value more extreme by more than
the accepted one's bound (_Check, shift_invert.InvertCheck).
Eigenvector signs: the component of largest magnitude is positive. Eigenvalues down to
-sqrt(eps(S)) lam_max are rounding; only below that is S indefinite.

Host synchronisation: one copy for the input checks, one per Lanczos step (its
convergence check) and one per factorisation; the outputs stay on S's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from condnum import _policy
from condnum._ops import check_budget, check_square, fail
from condnum.portable.checks import range_scale, symmetrized
from condnum.portable.lanczos import (
    Acceptance,
    Lanczos,
    Ritz,
    pair_operator,
    pseudo_random_unit,
    run_with_check,
)
from condnum.portable.shift_invert import (
    invert_bottom,
    shift_invert_bottom,
    shifted64,
    shifted_cholesky,
)


def _relative(bound: float, value: float) -> float:
    """|error| / |value|, 0 for an exact zero (S = 0), inf for an unbounded error."""
    if bound == 0:
        return 0.0
    return bound / abs(value) if value != 0 else math.inf


def _shift_invert_cost(d: int, dtype: torch.dtype, factor_paid: bool) -> float:
    """Estimated shift-and-invert cost (a float64 Cholesky and ~40 pairs of triangular
    solves; the solves alone when the factor is paid anyway) in plain Lanczos steps: the
    CPU kernel's model."""
    threads = max(1, torch.get_num_threads())
    chol = 0.0 if factor_paid else d / (9.0 * threads**0.8)
    return (chol + 40 * 1.3) * (1.8 if dtype == torch.float32 else 1.0)


def start_vector(a, b, random: torch.Tensor) -> torch.Tensor:
    """The normalised warm starts plus a pseudo-random component, so that no eigenvector is
    missed when a warm start is orthogonal to it."""
    if a is None and b is None:
        return random
    v = random * _policy.START_RANDOM_WEIGHT
    for w in (a, b):
        if w is not None:
            v = v + w
    return v


def with_sign_convention(u: torch.Tensor) -> torch.Tensor:
    i = u.abs().argmax()
    return torch.where(u[i] < 0, -u, u)


@dataclass
class Plain:
    lam_max: float
    u_max: torch.Tensor
    err_max: float
    lam_bottom: float = 0.0  # the smallest Ritz value above the threshold
    lowest: float = 0.0  # the smallest Ritz value
    err_bottom: float = 0.0
    u_bottom: torch.Tensor | None = None
    bottom_converged: bool = False


class _Check:
    """The restart check of plain Lanczos, the CPU kernel's Check: a second run from an
    independent pseudo-random start (stream CHECK_STREAM) alongside the first, accepted by
    the same rule. When its top Ritz value ends above theta by more than theta's bound, the
    first run had settled on a neighbour of lam_max: its pair, the more extreme, replaces
    the first. A bottom value accepted from plain Lanczos stands only if the check's own
    bottom Ritz value in the numerical range converges at or above it (minus its bound)
    within the first run's steps + RATE_WINDOW; otherwise shift-and-invert takes over from
    the check's bottom vector."""

    def __init__(self, ck: Lanczos, want_bottom: bool, tol: float, rtol: float) -> None:
        self.ck, self.want_bottom, self.tol, self.rtol = ck, want_bottom, tol, rtol
        self.top_decided = self.bottom_decided = self.bottom_refuted = False
        self.check_bottom = False  # a bottom accepted by the first run is to be checked
        self.below = 0.0  # the check's bottom refutes it below this
        self.bottom_budget = 0
        self.top_ok, self.bottom_ok = Acceptance(), Acceptance()
        self.r: Ritz | None = None  # the check's top pair
        self.b: Ritz | None = None  # its bottom pair in the numerical range

    def decided(self, first_done: bool) -> bool:
        """After a step of the check: whether it is decided. ``first_done``: the first run
        has ended and set check_bottom, below and bottom_budget."""
        ck, tol = self.ck, self.tol
        m = ck.size
        if m < _policy.FIRST_CHECK and ck.can_step:
            return False
        if not self.top_decided:
            self.r = ck.ritz(m - 1)
            self.top_decided = ck.invariant or self.top_ok(
                self.r.bound <= tol * abs(self.r.value), m
            )
        if not first_done:
            return self.top_decided and not self.want_bottom
        if not self.bottom_decided:
            ib = ck.count_below(self.rtol * self.r.value) if self.rtol > 0 else 0
            if ib < m:
                self.b = ck.ritz(ib)
                self.bottom_refuted = self.b.value < self.below
                self.bottom_decided = (
                    self.bottom_refuted
                    or ck.invariant
                    or self.bottom_ok(self.b.bound <= tol * self.b.value, m)
                )
            if not self.bottom_decided and m >= self.bottom_budget:
                self.bottom_decided = self.bottom_refuted = True
        return self.top_decided and self.bottom_decided


def _plain(W, start, num_iters, tol, rtol, want_bottom, op, factor_paid=False) -> Plain:
    """factor_paid: the bottom's alternative costs only shift-and-invert steps (ski rental)."""
    d = W.shape[0]

    def apply(v: torch.Tensor) -> torch.Tensor:
        return torch.mv(W, v)

    lz = Lanczos(apply, d, num_iters, W.dtype, W.device)
    ck = Lanczos(apply, d, num_iters, W.dtype, W.device)
    lz.start(start)
    ck.start(pseudo_random_unit(d, W.dtype, W.device, _policy.CHECK_STREAM))
    eps = torch.finfo(W.dtype).eps
    si_cost = _shift_invert_cost(d, W.dtype, factor_paid)
    top_done = bottom_converged = False
    top_ok, bottom_ok = Acceptance(), Acceptance()
    top: Ritz | None = None
    top_step = bottom_index = 0
    log_rel = [0.0] * (lz.max_steps + 1)  # log(bound / theta) by step

    def first_ended() -> bool:
        """After a step of the first run: whether it has ended."""
        nonlocal top_done, top, top_step, bottom_index, bottom_converged
        m = lz.size
        last = not lz.can_step
        if m < _policy.FIRST_CHECK and not last:
            return False
        if not top_done:
            top = lz.ritz(m - 1)
            top_done = lz.invariant or top_ok(top.bound <= tol * abs(top.value), m)
            if not top_done:
                return last
            top_step = m
            if not want_bottom:
                return True
        # The bottom end from the same Krylov space: the smallest Ritz value above the
        # threshold, while S is not too ill-conditioned for S's dtype.
        lam_top = top.value
        ib = lz.count_below(rtol * lam_top) if rtol > 0 else 0
        if ib >= m:
            return True
        bottom = lz.ritz(ib)
        same_target = ib == bottom_index
        bottom_index = ib
        if (
            bottom.value <= rtol * lam_top
            or _policy.product_floor(lam_top, eps) > tol * bottom.value
        ):
            return True
        if lz.invariant or bottom_ok(bottom.bound <= tol * bottom.value and same_target, m):
            bottom_converged = True
            return True
        if last:
            return True
        # Ski rental: give up once the steps spent on the bottom alone reach a fraction of
        # the shift-and-invert cost, or earlier when the error bound's recent decay rate
        # predicts that it will not converge in time.
        extra = m - top_step
        allowance = _policy.SKI_RENTAL * si_cost - extra
        log_rel[m] = math.log(max(bottom.bound, _policy.LOG_BOUND_FLOOR) / bottom.value)
        if allowance <= 0:
            return True
        if extra >= _policy.RATE_WINDOW:
            rate = (log_rel[m - _policy.RATE_WINDOW] - log_rel[m]) / _policy.RATE_WINDOW
            needed = (log_rel[m] - math.log(tol)) / max(rate, _policy.MIN_RATE)
            if needed > _policy.RATE_MARGIN * allowance or m + needed > lz.max_steps:
                return True
        return False

    out: Plain | None = None
    need_check = False
    check = _Check(ck, want_bottom, tol, rtol)

    def on_first_end() -> bool:
        """The first run's result; whether the check is needed."""
        nonlocal top, out, need_check
        # Keep the accepted top pair unless the final one has a smaller bound, or has risen
        # past the accepted one's bound (which had then settled on a lower eigenvalue).
        final = lz.ritz(lz.size - 1)
        if not top_done or final.bound <= top.bound or final.value - top.value > top.bound:
            top = final
        lowest = lz.value(0)
        if lowest < -_policy.indefinite_floor(W.dtype) * abs(top.value):  # Ritz values lie inside
            fail(
                op,
                f"S must be positive semi-definite, but it has an eigenvalue {lowest:g} < 0 "
                f"(lam_max = {top.value:g})",
            )
        out = Plain(top.value, lz.ritz_vector(top, W.dtype), _relative(top.bound, top.value))
        if want_bottom:
            bottom = lz.ritz(min(bottom_index, lz.size - 1))
            out.lowest = lowest
            out.lam_bottom = bottom.value
            out.err_bottom = _relative(bottom.bound, bottom.value)
            out.bottom_converged = bottom_converged
            out.u_bottom = lz.ritz_vector(bottom, W.dtype)
        # The whole space spanned (m = d) leaves nothing to miss; an unconverged top is
        # reported by err already.
        need_check = top_done and lz.size < d and top.value > 0
        check.check_bottom = need_check and want_bottom and out.bottom_converged
        check.bottom_decided = not check.check_bottom
        check.below = out.lam_bottom - out.err_bottom * out.lam_bottom
        check.bottom_budget = lz.size + _policy.RATE_WINDOW
        return need_check

    apply2 = pair_operator(apply, lambda X: W @ X, W.device, W.dtype)
    run_with_check(lz, ck, apply2, first_ended, on_first_end, check.decided)
    if not need_check:
        return out
    r = check.r if check.top_decided else ck.ritz(ck.size - 1)
    if _policy.check_refutes_top(top.value, top.bound, r.value):
        out.lam_max, out.u_max = r.value, ck.ritz_vector(r, W.dtype)
        out.err_max = _relative(r.bound, r.value)
        out.bottom_converged = False  # its threshold moved: shift-and-invert decides
    if check.check_bottom and check.bottom_refuted:
        out.bottom_converged = False
        if check.b is not None:
            out.u_bottom = ck.ritz_vector(check.b, W.dtype)
            out.lam_bottom = min(out.lam_bottom, check.b.value)
    return out


def _prepare(S, num_iters, tol, op, vectors):
    """(W, scale, units, random): S = scale * W, checked, symmetrised and in range."""
    check_square(S, op)
    check_budget(num_iters, tol, op)
    W, max_abs, units = symmetrized(S, op, "S", vectors)
    scale = range_scale(max_abs, S.dtype)
    if scale != 1.0:
        W = W / scale
    return W, scale, units, pseudo_random_unit(W.shape[0], W.dtype, W.device)


def _err(value: float, S: torch.Tensor) -> torch.Tensor:
    bound = _policy.with_output_rounding(value, S.dtype)
    return torch.tensor(bound, dtype=torch.float64, device=S.device)


def top_eigh(S, num_iters: int, tol: float, v0):
    """(lam_max, u_max, err) of a symmetric PSD S."""
    W, scale, units, random = _prepare(S, num_iters, tol, "top_eigh", {"v0": v0})
    p = _plain(W, start_vector(units["v0"], None, random), num_iters, tol, 0.0, False, "top_eigh")
    lam = torch.tensor(p.lam_max * scale, dtype=S.dtype, device=S.device)
    return lam, with_sign_convention(p.u_max), _err(p.err_max, S)


def _check_rtol(S, num_iters: int, tol: float, rtol: float, op: str) -> None:
    if not (rtol >= 0 and rtol < 1):
        check_square(S, op)  # the CPU kernel's order of checks
        check_budget(num_iters, tol, op)
        fail(op, f"rtol must be in [0, 1), got {rtol:g}")


def extreme_eigh(S, num_iters: int, rtol: float, tol: float, v0_min, v0_max):
    """(lam_min, lam_max, u_min, u_max, err) of a symmetric PSD S."""
    _check_rtol(S, num_iters, tol, rtol, "extreme_eigh")
    vectors = {"v0_max": v0_max, "v0_min": v0_min}
    W, scale, units, random = _prepare(S, num_iters, tol, "extreme_eigh", vectors)
    a, b = units["v0_max"], units["v0_min"]
    # 1. Both ends from one Krylov space of S.
    p = _plain(W, start_vector(a, b, random), num_iters, tol, rtol, True, "extreme_eigh")
    u_max = with_sign_convention(p.u_max)
    if p.lam_max <= 0:  # S == 0: every unit vector is an eigenvector of eigenvalue 0
        zero = torch.zeros((), dtype=S.dtype, device=S.device)
        return zero, zero.clone(), u_max.clone(), u_max, _err(0.0, S)
    # 2. The bottom end, by shift-and-invert unless plain Lanczos already has it.
    if p.bottom_converged:
        lam_min, u_min, err_min = p.lam_bottom, p.u_bottom, p.err_bottom
    else:
        # From the warm start, or else from plain Lanczos' bottom Ritz vector (mostly low
        # eigenvectors), as from a warm start.
        start = start_vector(b if b is not None else p.u_bottom, None, random)
        r = shift_invert_bottom(W, p.lam_max, rtol, tol, num_iters, start, p.lowest, p.lam_bottom)
        lam_min, u_min, err_min = r.lam, r.u.to(S.dtype), r.err
    lams = torch.tensor([lam_min * scale, p.lam_max * scale], dtype=S.dtype, device=S.device)
    return (
        lams[0].clone(),
        lams[1].clone(),
        with_sign_convention(u_min),
        u_max,
        _err(max(err_min, p.err_max), S),
    )


def floored_min(S, num_iters: int, rtol: float, tol: float, v0_min, v0_max):
    """(lam_min, lam_max, u_min, u_max, err, saturated): the CPU kernel's floored_min.

    Plain Lanczos (its bottom end down to sigma / 2, given up sooner: the factor below is
    paid anyway), then one float64 Cholesky of S - sigma I, sigma = rtol * lam_max: it fails
    exactly when some eigenvalue is at or below sigma (saturated: lam_min = sigma, and S is
    still checked for indefiniteness by the factorisation of S + tau I); otherwise lam_min =
    lam_1, from plain Lanczos when it converged there, else by shift-and-invert Lanczos
    through that factor (lam_1 maps to the top).
    """
    _check_rtol(S, num_iters, tol, rtol, "floored_min")
    vectors = {"v0_max": v0_max, "v0_min": v0_min}
    W, scale, units, random = _prepare(S, num_iters, tol, "floored_min", vectors)
    a, b = units["v0_max"], units["v0_min"]
    start = start_vector(a, b, random)
    p = _plain(W, start, num_iters, tol, rtol / 2, True, "floored_min", factor_paid=True)
    sigma = rtol * p.lam_max
    lam_min, u_min, err = sigma, p.u_bottom, p.err_max
    saturated = True
    if p.lam_max > 0:
        L, info = torch.linalg.cholesky_ex(shifted64(W, -sigma))
        saturated = info.item() != 0
        if saturated:
            tau = _policy.cholesky_shift(rtol, W.shape[0], p.lam_max)
            shifted_cholesky(W, p.lam_max, tau, "floored_min")
        elif p.bottom_converged:
            lam_min, err = p.lam_bottom, max(err, p.err_bottom)
        else:
            start = start_vector(b if b is not None else p.u_bottom, None, random).double()
            r = invert_bottom(L, -sigma, sigma, tol, num_iters, start)
            lam_min, u_min, err = r.lam, r.u.to(S.dtype), max(err, r.err)
    lams = torch.tensor([lam_min * scale, p.lam_max * scale], dtype=S.dtype, device=S.device)
    return (
        lams[0].clone(),
        lams[1].clone(),
        with_sign_convention(u_min),
        with_sign_convention(p.u_max),
        _err(err, S),
        torch.tensor(saturated, device=S.device),
    )
