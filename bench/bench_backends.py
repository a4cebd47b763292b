"""The portable implementation against the native CPU kernel, in the same process.

For each dtype and spectrum, times a cold ``extreme_eigh``, ``top_eigh`` and ``floored_min``
(R_ill's floored bottom, default rtol) of the same S under ``condnum.backend("native")`` and
under ``condnum.backend("portable")``; `ratio` is portable's time over native's (1.0: as
fast). `max_rel_diff` is the larger relative difference between the two backends'
eigenvalues. `steps` counts the native kernel's solver steps per call (its profiler ranges;
both backends follow one policy, so the portable path takes the same steps where their
eigenvalues agree), and `extra_us_per_step` = (portable - native) / steps is what the
portable path adds per step (its once-per-call work spread over the steps): Python, torch's
per-call dispatch, and the host copy and tridiagonal work of each step's convergence check.
`torch_floor` is the floor under `ratio` that torch's own kernels set: the time of the same
steps through torch (``_steps.step_costs``' ``torch_ms``: each product or solve for one
vector, as the portable path applies them on the CPU, the Gram-Schmidt passes, and a float64
Cholesky where the solve takes shift-and-invert steps, and always for ``floored_min``) over
native's time. Where it exceeds 1.5, the portable path cannot come within 1.5x of the native
one on this machine, even with no host work. The two backends are timed alternately, three
rounds each (``_harness.alternate``), so that the machine's load, which drifts on shared
machines, weighs on both alike.

    python bench/bench_backends.py --quick
    python bench/bench_backends.py --d 768 --threads 1 --stat min
"""

from __future__ import annotations

import math
import warnings

import _harness as H
import _steps

import condnum
from condnum import functional as F

QUICK_SPECTRA = [("geometric", 1e2), ("wishart", float("nan"))]
OPS = {
    "extreme_eigh": lambda S: F.extreme_eigh(S)[:2],
    "top_eigh": lambda S: F.top_eigh(S)[:1],
    "floored_min": lambda S: F.floored_min(S)[:1],
}
KEY = ["d", "dtype", "spectrum", "kappa", "op"]
COLUMNS = [
    *KEY,
    "native_ms",
    "portable_ms",
    "ratio",
    "torch_floor",
    "max_rel_diff",
    "steps",
    "extra_us_per_step",
]


def compare(S, op: str, fn, min_run_time: float) -> dict[str, float]:
    """Both backends' times of ``fn(S)`` (``op``: its name), their ratio, its floor and the
    eigenvalues' largest difference."""
    backends = ("native", "portable")
    lams = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unconverged solves report via err
        ms = H.alternate({b: lambda: fn(S) for b in backends}, min_run_time, condnum.backend)
        for backend in backends:
            with condnum.backend(backend):
                lams[backend] = [float(x) for x in fn(S)]
    with condnum.backend("native"):
        costs = _steps.step_costs(S, None, None, op)
    steps = sum(costs[k]["steps"] for k in _steps.STEPS if k in costs)
    pairs = zip(lams["portable"], lams["native"], strict=True)
    return {
        "native_ms": ms["native"],
        "portable_ms": ms["portable"],
        "ratio": ms["portable"] / ms["native"],
        "torch_floor": costs["torch_ms"] / ms["native"],
        "max_rel_diff": max(H.rel_err(a, b) for a, b in pairs),
        "steps": steps,
        "extra_us_per_step": (ms["portable"] - ms["native"]) * 1e3 / steps if steps else math.nan,
    }


def main() -> None:
    args = H.parser(__doc__.split("\n")[0]).parse_args()
    args.device = "cpu"  # the native kernel to compare with is the CPU one
    device = H.setup(args)
    ds = args.d or ([256] if args.quick else [768])
    mrt = args.min_run_time or (0.05 if args.quick else 0.5)
    env = H.environment(device)
    name = args.name or "bench_backends"
    table = H.Table(name, COLUMNS, env, KEY, args.compare, time_column="portable_ms")
    cases = H.matrix_cases(args, ds, QUICK_SPECTRA if args.quick else H.SOLVER_SPECTRA, device)
    for d, dtype, kind, kappa, S in cases:
        for op, fn in OPS.items():
            case = {"d": d, "dtype": str(dtype).removeprefix("torch."), "spectrum": kind}
            table.add(**case, kappa=kappa, op=op, **compare(S, op, fn, mrt))
    table.save(args.name)


if __name__ == "__main__":
    main()
