"""Cost of one solver step of the CPU kernel against the same work through torch's BLAS.

A Lanczos step on S is ``w = S v`` plus classical Gram-Schmidt against the basis V_j
(``h = V_j w; w -= V_j^T h``, once or twice); a shift-and-invert step replaces ``S v`` by
the two triangular solves with the Cholesky factor of ``S + tau I`` (float64). The kernel
marks each step as a profiler range (``condnum::lanczos_step``,
``condnum::shift_invert_step``). ``step_costs`` profiles ``extreme_eigh`` for those ranges,
reads each step's basis size and number of Gram-Schmidt passes from its child ops, and
replays the same steps as plain torch calls (``torch.mv``, ``torch.addmv``,
``torch.linalg.solve_triangular`` on factors already in LAPACK's column-major layout)
under the same profiler, so both sides pay its per-op overhead. The O(d) work of a step
(norms, the scaling of the new basis vector) and the convergence checks are left out of
the torch side: its time is a floor for the step. Ratio = median ours / median torch.

``runs`` splits a call's steps by Krylov run, in order: a step whose basis has one row
starts a run, ``L`` marks a Lanczos run on S, ``S`` a shift-and-invert run. A cold
``extreme_eigh`` reads ``L77 L66 S64 S69``: the first run, its restart check, then
shift-and-invert and its check.

``floor_ms`` is the time of the solve's steps alone (per call, every kind), each at the
faster of the two medians, plus one float64 Cholesky (``torch.linalg.cholesky``) when it
takes shift-and-invert steps, which need a factor: a solve that takes these steps cannot
beat it on this machine, even with its other factorisations, convergence checks and O(d)
work free. eigvalsh's time over it is the largest speed-up that step count allows.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable

import _harness as H
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from condnum import functional as F

STEPS = {"lanczos": "condnum::lanczos_step", "shift_invert": "condnum::shift_invert_step"}
REPLAY = "bench::torch_step"


def _profiled(fn: Callable[[], object], min_events: int) -> tuple[list, int]:
    """Profiler events of repeated ``fn()`` calls until ``min_events`` step ranges are seen
    (at most 20 calls), and the number of calls."""
    events: list = []
    calls = 0
    while calls < 20:
        calls += 1
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            fn()
        events += [e for e in prof.events() if e.name in STEPS.values() or e.name == REPLAY]
        if len(events) >= min_events:
            break
    return events, calls


def steps_per_call(fn: Callable[[], object]) -> float:
    """The solver steps (Lanczos and shift-and-invert ranges, every run) of one ``fn()``
    call; only the native CPU kernel marks them."""
    events, calls = _profiled(fn, 1)
    return sum(e.name in STEPS.values() for e in events) / calls


def _plan(event) -> tuple[int, int]:
    """(basis rows, Gram-Schmidt passes) of one step: from its ``aten::addmv`` children,
    whose matrix argument is the transposed basis (d, rows)."""
    gs = [c for c in event.cpu_children if c.name == "aten::addmv"]
    rows = gs[0].input_shapes[1][1] if gs and gs[0].input_shapes else 1
    return rows, max(len(gs), 1)


def _shifted64(S: torch.Tensor) -> torch.Tensor:
    """S + tau I in float64, tau = 1e-3 of S's mean diagonal: positive definite, like the
    shifted S the solver factorises."""
    S64 = S.double()
    return S64 + S64.diagonal().mean() * 1e-3 * torch.eye(S.shape[0], dtype=torch.float64)


def _replay(S: torch.Tensor, kind: str, plans: list[tuple[int, int]]) -> list[float]:
    """Step times (us) of the same steps through torch calls, under the profiler."""
    d = S.shape[0]
    dtype = S.dtype if kind == "lanczos" else torch.float64
    rows_max = max(r for r, _ in plans)
    V = torch.linalg.qr(torch.randn(d, rows_max, dtype=dtype))[0].T.contiguous()
    v = V[0].clone()
    w, h = torch.empty(d, dtype=dtype), torch.empty(rows_max, dtype=dtype)
    if kind == "shift_invert":
        L = torch.linalg.cholesky(_shifted64(S))
        Lc = L.mT.contiguous().mT  # column-major lower factor: no copy inside LAPACK calls
        Uc = L.contiguous().mT  # column-major upper factor L^T
        y = torch.empty(d, 1, dtype=torch.float64)

    def step(rows: int, passes: int) -> None:
        with record_function(REPLAY):
            if kind == "lanczos":
                torch.mv(S, v, out=w)
            else:
                torch.linalg.solve_triangular(Lc, v[:, None], upper=False, out=y)
                torch.linalg.solve_triangular(Uc, y, upper=True, out=w[:, None])
            basis, hb = V[:rows], h[:rows]
            for _ in range(passes):
                torch.mv(basis, w, out=hb)
                torch.addmv(w, basis.T, hb, alpha=-1, out=w)

    def run() -> None:
        for rows, passes in plans:
            step(rows, passes)

    run()  # warm-up
    return [e.cpu_time_total for e in _profiled(run, len(plans))[0]]


def runs(fn: Callable[[], object]) -> str:
    """The steps of one ``fn()`` call by Krylov run, in order ("L77 L66 S64 S69"; see
    above)."""
    events, _ = _profiled(fn, 1)
    letter = {name: kind[0].upper() for kind, name in STEPS.items()}
    ordered = sorted((e for e in events if e.name in letter), key=lambda e: e.time_range.start)
    counts: list[list] = []
    for e in ordered:
        if _plan(e)[0] == 1 or not counts:
            counts.append([letter[e.name], 0])
        counts[-1][1] += 1
    return " ".join(f"{k}{n}" for k, n in counts)


def step_costs(
    S: torch.Tensor, rtol: float, tol: float | None, op: str = "extreme_eigh"
) -> dict[str, dict[str, float]]:
    """kind -> {ours_us, torch_us, ratio, steps} for the steps ``op(S)`` takes (``op``:
    ``"extreme_eigh"`` or ``"top_eigh"``; kinds with no step are left out; ``steps`` per
    call), plus ``"floor_ms"``: the time of those steps alone, and ``"runs"``: one call's
    steps by Krylov run (:func:`runs`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unconverged solves report via err

        def solve() -> None:
            if op == "top_eigh":
                F.top_eigh(S, tol=tol)
            else:
                F.extreme_eigh(S, rtol=rtol, tol=tol)

        solve()  # warm-up
        events, calls = _profiled(solve, 200)
    out: dict = {"floor_ms": 0.0, "runs": runs(solve)}
    for kind, name in STEPS.items():
        ours = [e for e in events if e.name == name]
        if not ours:
            continue
        base = _replay(S, kind, [_plan(e) for e in ours])
        o, t = statistics.median(e.cpu_time_total for e in ours), statistics.median(base)
        out[kind] = {
            "ours_us": o,
            "torch_us": t,
            "ratio": o / t if t > 0 else math.nan,
            "steps": len(ours) / calls,
        }
        out["floor_ms"] += len(ours) / calls * min(o, t) / 1000
    if "shift_invert" in out:
        A = _shifted64(S)
        out["factor_ms"] = H.timeit(lambda: torch.linalg.cholesky(A), 0.05)
        out["floor_ms"] += out["factor_ms"]
    return out
