"""Cost of one solver step of the CPU kernel against the same work through torch's BLAS.

A Lanczos step on S is ``w = S v`` plus classical Gram-Schmidt against the basis V_j
(``h = V_j w; w -= V_j^T h``, once or twice); a shift-and-invert step replaces ``S v`` by
the two triangular solves with the Cholesky factor of ``S + tau I`` (float64). The kernel
marks each step as a profiler range (``condnum::lanczos_step``,
``condnum::shift_invert_step``), and a paired step, one step of each of two runs in
lockstep sharing one pass over S or the factor, as one range (``condnum::lanczos_pair_step``,
``condnum::shift_invert_pair_step``). ``step_costs`` profiles ``extreme_eigh`` for those
ranges, reads each Gram-Schmidt pass's basis size from the step's child ops, and replays
the same steps as plain torch calls (``torch.mv``, ``torch.addmv``,
``torch.linalg.solve_triangular`` on factors already in LAPACK's column-major layout; a
paired step as the two unpaired steps' products or solves, what the same work costs
through torch without pairing) under the same profiler, so both sides pay its per-op
overhead. The O(d)
work of a step (norms, the scaling of the new basis vector) and the convergence checks are
left out of the torch side: its time is a floor for the step. Ratio, per kind: the steps'
time at the median of each range (single, paired) over the same for torch.

``runs`` splits a call's steps by Krylov run, in order: a step whose basis has one row
starts a run, ``L`` marks a Lanczos run on S, ``S`` a shift-and-invert run, ``x2`` paired
steps (two runs in lockstep, a run and its restart check). A cold ``extreme_eigh`` reads
``L37x2 L17 S44x2 S4``: the first run and its restart check in lockstep for 37 steps, the
first run alone for 17 more, then shift-and-invert and its check the same way. ``steps``
counts a paired step as two.

``floor_ms`` is the time of the solve's steps alone (per call, every kind), each at the
faster of the two medians, plus one float64 Cholesky (``torch.linalg.cholesky``) when it
takes shift-and-invert steps, which need a factor: a solve that takes these steps cannot
beat it on this machine, even with its other factorisations, convergence checks and O(d)
work free. eigvalsh's time over it is the largest speed-up that step count allows.
``torch_ms`` is the same steps' time through torch alone (a paired step as two unpaired
ones), plus that Cholesky: what an implementation on torch operations that applies the
operator to one vector at a time pays at least, on top of its host work.
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
PAIRS = {
    "lanczos": "condnum::lanczos_pair_step",
    "shift_invert": "condnum::shift_invert_pair_step",
}
KIND = {name: kind for table in (STEPS, PAIRS) for kind, name in table.items()}
REPLAY = "bench::torch_step"
GS_PASS = "condnum::gram_schmidt_pass"


def _profiled(fn: Callable[[], object], min_events: int) -> tuple[list, int]:
    """Profiler events of repeated ``fn()`` calls until ``min_events`` step ranges are seen
    (at most 20 calls), and the number of calls."""
    events: list = []
    calls = 0
    while calls < 20:
        calls += 1
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            fn()
        events += [e for e in prof.events() if e.name in KIND or e.name == REPLAY]
        if len(events) >= min_events:
            break
    return events, calls


def steps_per_call(fn: Callable[[], object]) -> float:
    """The solver steps (Lanczos and shift-and-invert, every run, a paired step counted as
    two) of one ``fn()`` call; only the native CPU kernel marks them."""
    events, calls = _profiled(fn, 1)
    return sum(_width(e) for e in events if e.name in KIND) / calls


def passes_per_call(fn: Callable[[], object]) -> float:
    """The operator applications of one ``fn()`` call: its step ranges, a paired step (one
    pass over S or the factor for two runs) counted once."""
    events, calls = _profiled(fn, 1)
    return sum(e.name in KIND for e in events) / calls


def _width(event) -> int:
    """Steps in one step range: 2 for a paired step."""
    return 2 if event.name in PAIRS.values() else 1


def _plan(event) -> tuple[int, ...]:
    """The basis rows of each Gram-Schmidt pass of one step range, from its
    ``condnum::gram_schmidt_pass`` children, whose first input is the basis (rows, d)."""
    gs = [c for c in event.cpu_children if c.name == GS_PASS]
    rows = tuple(c.input_shapes[0][0] for c in gs if c.input_shapes)
    return rows or (1,)


def _shifted64(S: torch.Tensor) -> torch.Tensor:
    """S + tau I in float64, tau = 1e-3 of S's mean diagonal: positive definite, like the
    shifted S the solver factorises."""
    S64 = S.double()
    return S64 + S64.diagonal().mean() * 1e-3 * torch.eye(S.shape[0], dtype=torch.float64)


def _replay(S: torch.Tensor, kind: str, paired: bool, plans: list[tuple[int, ...]]) -> list[float]:
    """Step times (us) of the same steps through torch calls, under the profiler."""
    d = S.shape[0]
    dtype = S.dtype if kind == "lanczos" else torch.float64
    rows_max = max(max(p) for p in plans)
    V = torch.linalg.qr(torch.randn(d, rows_max, dtype=dtype))[0].T.contiguous()
    width = 2 if paired else 1
    v = V[:width].clone()  # (width, d): one row per run
    w, h = torch.empty(width, d, dtype=dtype), torch.empty(rows_max, dtype=dtype)
    if kind == "shift_invert":
        L = torch.linalg.cholesky(_shifted64(S))
        Lc = L.mT.contiguous().mT  # column-major lower factor: no copy inside LAPACK calls
        Uc = L.contiguous().mT  # column-major upper factor L^T
        y = torch.empty(d, 1, dtype=torch.float64)

    def step(plan: tuple[int, ...]) -> None:
        with record_function(REPLAY):
            for k in range(width):
                if kind == "lanczos":
                    torch.mv(S, v[k], out=w[k])
                else:
                    torch.linalg.solve_triangular(Lc, v[k, :, None], upper=False, out=y)
                    torch.linalg.solve_triangular(Uc, y, upper=True, out=w[k, :, None])
            for i, rows in enumerate(plan):  # the passes of one run, then the other's
                basis, hb, wk = V[:rows], h[:rows], w[min(i, width - 1)]
                torch.mv(basis, wk, out=hb)
                torch.addmv(wk, basis.T, hb, alpha=-1, out=wk)

    def run() -> None:
        for plan in plans:
            step(plan)

    run()  # warm-up
    return [e.cpu_time_total for e in _profiled(run, len(plans))[0]]


def runs(fn: Callable[[], object]) -> str:
    """The steps of one ``fn()`` call by Krylov run, in order ("L37x2 L17 S44x2 S4"; see
    above)."""
    events, _ = _profiled(fn, 1)
    ordered = sorted((e for e in events if e.name in KIND), key=lambda e: e.time_range.start)
    counts: list[list] = []
    for e in ordered:
        key = KIND[e.name][0].upper() + ("x2" if _width(e) == 2 else "")
        if _plan(e)[0] == 1 or not counts or counts[-1][0] != key:
            counts.append([key, 0])
        counts[-1][1] += 1
    return " ".join(f"{k[0]}{n}{k[1:]}" for k, n in counts)


def step_costs(
    S: torch.Tensor, rtol: float | None, tol: float | None, op: str = "extreme_eigh"
) -> dict[str, dict[str, float]]:
    """kind -> {ours_us, torch_us, ratio, steps} for the steps ``op(S)`` takes (``op``:
    ``"extreme_eigh"``, ``"top_eigh"`` or ``"floored_min"``, whose float64 Cholesky, the
    floor test, counts whether or not it takes shift-and-invert steps; kinds with no step
    are left out; ``steps`` per call, ``ours_us``/``torch_us`` per step, a paired step two),
    plus ``"floor_ms"``: the time of those steps alone, ``"torch_ms"``: the same through
    torch (see above), and ``"runs"``: one call's steps by Krylov run (:func:`runs`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unconverged solves report via err

        def solve() -> None:
            if op == "top_eigh":
                F.top_eigh(S, tol=tol)
            elif op == "floored_min":
                F.floored_min(S, rtol, tol=tol)
            else:
                F.extreme_eigh(S, rtol=rtol, tol=tol)

        solve()  # warm-up
        events, calls = _profiled(solve, 200)
        out: dict = {"floor_ms": 0.0, "torch_ms": 0.0, "runs": runs(solve)}
    for kind in STEPS:
        ours_us = torch_us = steps = 0.0
        for paired, name in ((False, STEPS[kind]), (True, PAIRS[kind])):
            ours = [e for e in events if e.name == name]
            if not ours:
                continue
            base = _replay(S, kind, paired, [_plan(e) for e in ours])
            o, t = statistics.median(e.cpu_time_total for e in ours), statistics.median(base)
            ranges = len(ours) / calls
            ours_us += ranges * o
            torch_us += ranges * t
            steps += ranges * (2 if paired else 1)
            out["floor_ms"] += ranges * min(o, t) / 1000
            out["torch_ms"] += ranges * t / 1000
        if steps:
            out[kind] = {
                "ours_us": ours_us / steps,
                "torch_us": torch_us / steps,
                "ratio": ours_us / torch_us if torch_us > 0 else math.nan,
                "steps": steps,
            }
    if "shift_invert" in out or op == "floored_min":
        A = _shifted64(S)
        out["factor_ms"] = H.timeit(lambda: torch.linalg.cholesky(A), 0.05)
        out["floor_ms"] += out["factor_ms"]
        out["torch_ms"] += out["factor_ms"]
    return out
