"""extreme_eigh / top_eigh / floored_min with a fixed budget (``tol = 0``): exactly
m = min(num_iters, d) Lanczos steps on S, and nothing that waits for the device.

No ``.item()``, no copy to the host and no Python branch on a tensor value: the steps,
the breakdown test, the range scaling and every choice among Ritz values are tensor
operations, so the op can be queued ahead of the device (and its cost is known in
advance). What that gives up:

- no value errors: NaN/Inf in S give NaN outputs, asymmetry and indefiniteness are not
  detected (S is symmetrised, as in the convergent mode); a zero or non-finite warm start
  is ignored;
- no shift-and-invert: both ends come from the one Krylov space of m steps,
      lam_max = the largest Ritz value,
      lam_min = the smallest Ritz value above rtol * lam_max,
  which, for an ill-conditioned S, needs m well above what the convergent mode spends on
  lam_max; ``err`` (the larger relative residual bound of the two, floored as the
  convergent mode's, on the device) says how far they are from converged;
- a breakdown (an S-invariant Krylov space, up to a beta below the breakdown level, which
  err still counts) is not a stop: the basis is continued with zero vectors, which add
  Ritz values 0, never above the threshold;
- floored_min is that extreme_eigh (down to half the floor) plus the floor test
  (``below_floor``, a float64 Cholesky whose status stays on the device).

One step is the convergent mode's (condnum.portable.lanczos.orthogonalised); with
the same m steps and no breakdown the Krylov space, T and the Ritz pairs are the same.
The small eigenproblem of the m x m tridiagonal T is ``torch.linalg.eigh`` on S's device:
on the CPU that is all; on CUDA, torch checks that call's solver status on the host, the
one synchronisation left, which condnum cannot remove (torch has no ``eigh_ex``). The
pseudo-random start vector is copied to the device once per (d, dtype, device) and kept.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from condnum import _policy
from condnum._ops import check_budget, check_square, check_vector_for, fail
from condnum.portable.eigh import start_vector, with_sign_convention
from condnum.portable.lanczos import orthogonalised, pseudo_random_unit


def _unit_or_zero(v: torch.Tensor | None) -> torch.Tensor | None:
    """v / ||v||, or zeros where the norm is zero or not finite (the start ignores it)."""
    if v is None:
        return None
    n = torch.linalg.vector_norm(v.double())
    ok = torch.isfinite(n) & (n > 0)
    return torch.where(ok, v / torch.where(ok, n, 1.0), 0.0)


@lru_cache(maxsize=16)
def _random_start(d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The convergent mode's start vector, kept on the device: copying it there from the
    host would synchronise at every call."""
    return pseudo_random_unit(d, dtype, device)


def _symmetrised_in_range(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, p)``: W = (S + S^T) / 2 / p in S's dtype, p = 2^e (float64 0-dim) when
    max|S| = f 2^e, f in [0.5, 1), has |e| above the range limit, else 1 (exact division)."""
    S64 = S.double()
    W64 = (S64 + S64.mT) * 0.5
    _, e = torch.frexp(W64.abs().amax())
    p = torch.where(e.abs() > _policy.RANGE_EXPONENT_LIMIT[S.dtype], torch.exp2(e.double()), 1.0)
    return (W64 / p).to(S.dtype), p


def _lanczos(W: torch.Tensor, start: torch.Tensor, m: int):
    """``(V, T, coupling)`` after m steps from ``start``: V (m, d) in W's dtype, T (m, m)
    float64 and ``coupling`` (m,) float64, the betas that leave T: beta_m last, and each
    beta a breakdown zeroed in T at its step (0 elsewhere), on W's device. A Ritz pair
    (theta, s) of T has the residual ||coupling * s||."""
    d = W.shape[0]
    V = torch.zeros(m + 1, d, dtype=W.dtype, device=W.device)
    V[0] = start / torch.linalg.vector_norm(start)
    alpha = torch.zeros(m, dtype=torch.float64, device=W.device)
    beta = torch.zeros(m, dtype=torch.float64, device=W.device)
    scale = torch.zeros((), dtype=torch.float64, device=W.device)  # running estimate of ||S||
    eps = torch.finfo(W.dtype).eps
    coefficients = torch.empty(3, m, dtype=W.dtype, device=W.device)
    coupling = torch.zeros(m, dtype=torch.float64, device=W.device)
    for j in range(m):
        w = torch.mv(W, V[j])
        orthogonalised(w, V[: j + 1], coefficients)
        h, h2, b = coefficients[:, j].double()
        a = h + h2
        scale = torch.maximum(scale, torch.maximum(a.abs(), b))
        alive = b > _policy.BREAKDOWN * math.sqrt(d) * eps * scale
        alpha[j] = a
        beta[j] = torch.where(alive, b, 0.0)
        coupling[j] = torch.where(alive, 0.0, b)
        V[j + 1] = torch.where(alive, w / torch.where(alive, b, 1.0).to(W.dtype), 0.0)
    coupling[m - 1] = b  # beta_m, breakdown or not (the convergent mode's rule)
    off = beta[: m - 1]
    T = torch.diag(alpha) + torch.diag(off, 1) + torch.diag(off, -1)
    return V[:m], T, coupling


def _ritz_pair(V, values, vectors, i, coupling, dtype):
    """(theta_i, y_i, relative bound) for the 0-dim index tensor i: y = V^T s_i, unit, with
    its largest component positive; bound = max(||coupling * s_i|| (beta_m |s_i[m-1]|
    without a breakdown), the rounding of S v (_policy.product_floor)) / |theta_i|."""
    theta = values.gather(0, i.reshape(1))[0]
    s = vectors.index_select(1, i.reshape(1))[:, 0]
    y = s @ V.double()
    y = with_sign_convention(y / torch.linalg.vector_norm(y))
    floor = _policy.product_floor(values.abs().max(), torch.finfo(V.dtype).eps)
    bound = torch.maximum(torch.linalg.vector_norm(coupling * s), floor)
    return theta, y.to(dtype), torch.where(bound == 0, 0.0, bound / theta.abs())


class _Run:
    """The m-step Lanczos run on S and the eigendecomposition of its T."""

    def __init__(self, S: torch.Tensor, num_iters: int, v0s: list) -> None:
        d = S.shape[0]
        W, self.p = _symmetrised_in_range(S.contiguous())
        starts = [_unit_or_zero(v) for v in v0s]
        start = start_vector(*starts, _random_start(d, W.dtype, W.device))
        self.m = max(1, min(num_iters, d))
        self.V, T, self.coupling = _lanczos(W, start, self.m)
        self.values, self.vectors = torch.linalg.eigh(T)
        self.dtype = S.dtype

    def pair(self, i: torch.Tensor):
        return _ritz_pair(self.V, self.values, self.vectors, i, self.coupling, self.dtype)

    def top(self):
        return self.pair(torch.full((), self.m - 1, dtype=torch.long, device=self.V.device))

    def scaled(self, lam: torch.Tensor) -> torch.Tensor:
        return (lam * self.p).to(self.dtype)

    def err(self, err: torch.Tensor, lam_max: torch.Tensor) -> torch.Tensor:
        """0 for S = 0 (exact), else at least eps(S) / 2, the rounding of the returned values
        to S's dtype (_policy.with_output_rounding, on the device)."""
        rounded = err.clamp(min=0.5 * torch.finfo(self.dtype).eps)
        return torch.where(lam_max <= 0, 0.0, rounded)


def _check(S, num_iters: int, op: str, vectors: dict, rtol: float = 0.0) -> None:
    """The argument checks that need no tensor value (shapes, dtypes, devices, budget), in
    the fake kernels' order."""
    check_square(S, op)
    check_budget(num_iters, 0.0, op)
    if not (rtol >= 0 and rtol < 1):
        fail(op, f"rtol must be in [0, 1), got {rtol:g}")
    for name, v in vectors.items():
        check_vector_for(v, S, op, name)


def top_eigh(S, num_iters: int, v0):
    """(lam_max, u_max, err) after exactly min(num_iters, d) Lanczos steps."""
    _check(S, num_iters, "top_eigh", {"v0": v0})
    run = _Run(S, num_iters, [v0, None])
    lam_max, u_max, err = run.top()
    return run.scaled(lam_max), u_max, run.err(err, lam_max)


def extreme_eigh(S, num_iters: int, rtol: float, v0_min, v0_max):
    """(lam_min, lam_max, u_min, u_max, err) after exactly min(num_iters, d) Lanczos steps."""
    _check(S, num_iters, "extreme_eigh", {"v0_max": v0_max, "v0_min": v0_min}, rtol)
    run = _Run(S, num_iters, [v0_max, v0_min])
    lam_max, u_max, err_max = run.top()
    # the smallest Ritz value above the threshold (a breakdown's zeros never are)
    bottom = (run.values <= rtol * lam_max).sum().clamp(max=run.m - 1)
    lam_min, u_min, err_min = run.pair(bottom)
    err = run.err(torch.maximum(err_min, err_max), lam_max)
    lam_min = torch.where(lam_max <= 0, 0.0, lam_min)  # S == 0: every vector is an eigenvector
    return run.scaled(lam_min), run.scaled(lam_max), u_min, u_max, err


def below_floor(S: torch.Tensor, lam_max: torch.Tensor, rtol: float) -> torch.Tensor:
    """``lam_1(S) <= rtol * lam_max`` (0-dim bool), by a float64 Cholesky of ``S/lam_max - rtol I``.

    The factorisation succeeds exactly when ``S - rtol lam_max I`` is positive definite, up
    to float64 rounding (Sylvester's law of inertia); no value leaves the device.
    """
    scale = lam_max.double().clamp_min(torch.finfo(torch.float64).tiny)
    A = (S.detach().double() / scale).contiguous()
    A.view(-1)[:: S.shape[0] + 1] -= rtol  # the diagonal, in place: no identity matrix
    return torch.linalg.cholesky_ex(A).info != 0


def floored_min(S, num_iters: int, rtol: float, v0_min, v0_max):
    """(lam_min, lam_max, u_min, u_max, err, saturated) after exactly min(num_iters, d)
    Lanczos steps: the solve looks down to half the floor, so that an eigenvalue the floor
    test puts (by rounding) just above the floor is the one returned."""
    _check(S, num_iters, "floored_min", {"v0_max": v0_max, "v0_min": v0_min}, rtol)
    lam_min, lam_max, u_min, u_max, err = extreme_eigh(S, num_iters, rtol / 2, v0_min, v0_max)
    saturated = below_floor(S, lam_max, rtol)
    lam_min = torch.where(saturated, lam_max * rtol, lam_min)
    return lam_min, lam_max, u_min, u_max, err, saturated
