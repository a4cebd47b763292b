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
Each accepted end is checked by a second run from an independent pseudo-random start on the
operator deflated by the accepted vector (_restart_check, shift_invert.deflated_check).
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
from condnum.portable.lanczos import Acceptance, Lanczos, Ritz, deflated, pseudo_random_unit
from condnum.portable.shift_invert import shift_invert_bottom


def _relative(bound: float, value: float) -> float:
    """|error| / |value|, 0 for an exact zero (S = 0), inf for an unbounded error."""
    if bound == 0:
        return 0.0
    return bound / abs(value) if value != 0 else math.inf


def _shift_invert_cost(d: int, dtype: torch.dtype) -> float:
    """Estimated shift-and-invert cost (a float64 Cholesky and ~40 pairs of triangular
    solves) in plain Lanczos steps: the CPU kernel's model."""
    threads = max(1, torch.get_num_threads())
    chol = d / (9.0 * threads**0.8)
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


def _plain(W, start, num_iters, tol, rtol, want_bottom, op) -> Plain:
    d = W.shape[0]
    lz = Lanczos(lambda v: torch.mv(W, v), d, num_iters, W.dtype, W.device)
    lz.start(start)
    eps = torch.finfo(W.dtype).eps
    si_cost = _shift_invert_cost(d, W.dtype)
    top_done = bottom_converged = False
    top_ok, bottom_ok = Acceptance(), Acceptance()
    top: Ritz | None = None
    top_step = bottom_index = 0
    log_rel = [0.0] * (lz.max_steps + 1)  # log(bound / theta) by step
    while lz.step():
        m = lz.size
        last = not lz.can_step
        if m < _policy.FIRST_CHECK and not last:
            continue
        if not top_done:
            top = lz.ritz(m - 1)
            top_done = lz.invariant or top_ok(top.bound <= tol * abs(top.value), m)
            if not top_done:
                continue
            top_step = m
            if not want_bottom:
                break
        # The bottom end from the same Krylov space: the smallest Ritz value above the
        # threshold, while S is not too ill-conditioned for S's dtype.
        lam_top = top.value
        ib = lz.count_below(rtol * lam_top) if rtol > 0 else 0
        if ib >= m:
            break
        bottom = lz.ritz(ib)
        same_target = ib == bottom_index
        bottom_index = ib
        if (
            bottom.value <= rtol * lam_top
            or _policy.product_floor(lam_top, eps) > tol * bottom.value
        ):
            break
        if lz.invariant or bottom_ok(bottom.bound <= tol * bottom.value and same_target, m):
            bottom_converged = True
            break
        if last:
            break
        # Ski rental: give up once the steps spent on the bottom alone reach a fraction of
        # the shift-and-invert cost, or earlier when the error bound's recent decay rate
        # predicts that it will not converge in time.
        extra = m - top_step
        allowance = _policy.SKI_RENTAL * si_cost - extra
        log_rel[m] = math.log(max(bottom.bound, _policy.LOG_BOUND_FLOOR) / bottom.value)
        if allowance <= 0:
            break
        if extra >= _policy.RATE_WINDOW:
            rate = (log_rel[m - _policy.RATE_WINDOW] - log_rel[m]) / _policy.RATE_WINDOW
            needed = (log_rel[m] - math.log(tol)) / max(rate, _policy.MIN_RATE)
            if needed > _policy.RATE_MARGIN * allowance or m + needed > lz.max_steps:
                break
    # Keep the accepted top pair unless the final one has a smaller bound, or has risen past
    # the accepted one's bound (which had then settled on a lower eigenvalue).
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
    if top_done and lz.size < d and top.value > 0:
        _restart_check(W, out, top, lz.size, num_iters, tol, rtol, want_bottom)
    return out


def _restart_check(W, p: Plain, top: Ritz, steps, num_iters, tol, rtol, want_bottom) -> None:
    """The CPU kernel's restart check (csrc/cpu/extreme_eigh.cpp, restart_check): a second
    Lanczos run from an independent pseudo-random start (stream CHECK_STREAM) on the deflated
    operator P S P, P = I - y y^T, y = p.u_max, accepted by the same rule as the first. When
    its top Ritz value ends above theta, the first run had settled on a neighbour of lam_max
    (or had not converged): its pair, the more extreme, replaces the first, with its
    residual for S as the bound. A
    bottom value accepted from plain Lanczos stands only if the check's own bottom Ritz value
    in the numerical range converges at or above it (minus its bound) within ``steps`` +
    RATE_WINDOW steps; otherwise shift-and-invert takes over from the check's bottom vector."""
    d = W.shape[0]
    apply, project = deflated(lambda v: torch.mv(W, v), p.u_max.to(W.dtype))
    ck = Lanczos(apply, d, num_iters, W.dtype, W.device)
    ck.start(project(pseudo_random_unit(d, W.dtype, W.device, _policy.CHECK_STREAM)))
    check_bottom = want_bottom and p.bottom_converged
    below = p.lam_bottom - p.err_bottom * p.lam_bottom
    top_decided, bottom_decided, bottom_refuted = False, not check_bottom, False
    top_ok, bottom_ok = Acceptance(), Acceptance()
    r = b = None
    while ck.step():
        m = ck.size
        if m < _policy.FIRST_CHECK and ck.can_step:
            continue
        if not top_decided:
            r = ck.ritz(m - 1)
            top_decided = ck.invariant or top_ok(r.bound <= tol * abs(r.value), m)
        if not bottom_decided:
            ib = ck.count_below(rtol * r.value) if rtol > 0 else 0
            if ib < m:
                b = ck.ritz(ib)
                bottom_refuted = b.value < below
                bottom_decided = (
                    bottom_refuted or ck.invariant or bottom_ok(b.bound <= tol * b.value, m)
                )
            if not bottom_decided and m >= steps + _policy.RATE_WINDOW:
                bottom_decided = bottom_refuted = True
        if top_decided and bottom_decided:
            break
    if not top_decided:
        r = ck.ritz(ck.size - 1)
    if r.value > top.value:  # the more extreme: the first run settled on a lower eigenvalue
        u = ck.ritz_vector(r, torch.float64)
        residual = torch.linalg.vector_norm(torch.mv(W, u.to(W.dtype)).double() - r.value * u)
        p.lam_max, p.u_max = r.value, u.to(W.dtype)
        bound = max(residual.item(), _policy.product_floor(ck.max_abs_value(), ck.eps))
        p.err_max = _relative(bound, r.value)  # the residual for S itself
        p.bottom_converged = False  # its threshold moved: shift-and-invert decides
    if check_bottom and bottom_refuted:
        p.bottom_converged = False
        if b is not None:
            p.u_bottom = ck.ritz_vector(b, W.dtype)
            p.lam_bottom = min(p.lam_bottom, b.value)


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


def extreme_eigh(S, num_iters: int, rtol: float, tol: float, v0_min, v0_max):
    """(lam_min, lam_max, u_min, u_max, err) of a symmetric PSD S."""
    if not (rtol >= 0 and rtol < 1):
        check_square(S, "extreme_eigh")  # the CPU kernel's order of checks
        check_budget(num_iters, tol, "extreme_eigh")
        fail("extreme_eigh", f"rtol must be in [0, 1), got {rtol:g}")
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
