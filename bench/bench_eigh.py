"""Extreme eigenvalues of a symmetric PSD S: condnum.functional.extreme_eigh vs the field.

For each size, dtype and spectrum, every method computes (lam_min, lam_max) of the same
S, where lam_min is taken over the numerical range (eigenvalues above rtol * lam_max,
rtol = d * eps(dtype), the library default). Errors are relative to float64
torch.linalg.eigvalsh of the same matrix; times are medians (torch.utils.benchmark) and
`speedup` is eigvalsh's time over the method's, in the same run, dtype and device: the
methods are timed in turn, three rounds each (``_harness.alternate``), so that a change of
the machine's load weighs on the baseline and the methods alike.
On the CPU, the `ours` rows also give the cost of one solver step over the same work
through torch's BLAS/LAPACK, measured in the same run (bench/_steps.py): `lz_step` for a
Lanczos step on S (product plus reorthogonalisation), `si_step` for a shift-and-invert
step (two triangular solves plus reorthogonalisation); `-` where the solve took no such
step. The `ours` and `ours_top` rows give the solve's `steps` (all kinds, per call) and
`step_floor`: eigvalsh's time over the time of those steps alone (each at the faster of
our and torch's step time, plus one float64 Cholesky where it takes shift-and-invert
steps), the largest speed-up that step count allows on this machine (convergence checks
and further factorisations counted free); `converged` says whether condnum's solve met
its tol, from the op's err output (`no`: num_iters ran out, and its time is that of an
unfinished solve, with no restart check); `runs` splits those steps by Krylov run
(bench/_steps.py: `L` Lanczos on S, `S` shift-and-invert, `x2` steps taken in lockstep by
a run and its restart check, one pass over S or the factor for both, counted as two in
`steps`).

Methods:
  ours       extreme_eigh cold (fixed pseudo-random start);
  ours_warm  extreme_eigh warm-started with the eigenvectors of a perturbed matrix
             M S M^T, M = I + 1e-3 E (the previous training step);
  ours_top   top_eigh cold: lam_max only (what R_well needs);
  eigvalsh   torch.linalg.eigvalsh (the baseline);
  eigh       torch.linalg.eigh;
  lobpcg     torch.lobpcg, k=1, once largest and once smallest (no preconditioner);
  eigsh      scipy.sparse.linalg.eigsh (ARPACK): which='LA' for the top, shift-invert
             sigma=0 for the bottom (CPU only).
lobpcg/eigsh return the smallest eigenvalue of S, not of its numerical range: where
they differ (float32, kappa > 1/rtol) their err_min says so.

    python bench/bench_eigh.py --quick
    python bench/bench_eigh.py --d 768 --name eigh_768
"""

from __future__ import annotations

import math
import warnings

import _harness as H
import _steps
import torch

from condnum import functional as F
from condnum import reference
from condnum._ops import ops
from condnum.defaults import DEFAULT_TOL, dtype_rtol

SPECTRA = [
    ("geometric", 1e2),
    ("geometric", 1e4),
    ("geometric", 1e6),
    ("loguniform", 1e2),
    ("loguniform", 1e4),
    ("loguniform", 1e6),
    ("wishart", float("nan")),
]
QUICK_SPECTRA = [("geometric", 1e2), ("geometric", 1e6), ("wishart", float("nan"))]
METHODS = ["ours", "ours_warm", "ours_top", "eigvalsh", "eigh", "lobpcg", "eigsh"]
#: The target accuracy (relative, vs float64 eigvalsh) of the "target" column and --tol target.
TARGET_TOL = {torch.float32: 1e-3, torch.float64: 1e-4}


def runners(S: torch.Tensor, rtol: float, tol: float | None, methods: list[str]):
    """name -> (fn, extract) where extract(fn()) gives (lam_min, lam_max) as floats; and
    name -> converged() for condnum's methods (see :func:`converged`)."""
    out, done = {}, {}
    if "ours" in methods:
        out["ours"] = (
            lambda: F.extreme_eigh(S, rtol=rtol, tol=tol),
            lambda r: (r[0].item(), r[1].item()),
        )
        done["ours"] = lambda: converged(S, rtol, tol)
    if "ours_warm" in methods:
        prev = F.extreme_eigh(H.perturbed(S, 1e-3), rtol=rtol, tol=tol)
        out["ours_warm"] = (
            lambda: F.extreme_eigh(S, rtol=rtol, tol=tol, v0_min=prev[2], v0_max=prev[3]),
            lambda r: (r[0].item(), r[1].item()),
        )
        done["ours_warm"] = lambda: converged(S, rtol, tol, prev[2], prev[3])
    if "ours_top" in methods:
        out["ours_top"] = (lambda: F.top_eigh(S, tol=tol), lambda r: (math.nan, r[0].item()))
        done["ours_top"] = lambda: converged(S, None, tol)
    if "eigvalsh" in methods:
        out["eigvalsh"] = (
            lambda: torch.linalg.eigvalsh(S),
            lambda ev: (reference.smallest_in_range(ev.double(), rtol).item(), ev[-1].item()),
        )
    if "eigh" in methods:
        out["eigh"] = (
            lambda: torch.linalg.eigh(S),
            lambda r: (reference.smallest_in_range(r[0].double(), rtol).item(), r[0][-1].item()),
        )
    if "lobpcg" in methods:
        ltol = tol if tol is not None else DEFAULT_TOL[S.dtype]

        def lobpcg():
            top = torch.lobpcg(S, k=1, largest=True, tol=ltol, niter=1000)[0]
            bottom = torch.lobpcg(S, k=1, largest=False, tol=ltol, niter=1000)[0]
            return bottom, top

        out["lobpcg"] = (lobpcg, lambda r: (r[0].item(), r[1].item()))
    if "eigsh" in methods and S.device.type == "cpu":
        try:
            from scipy.sparse.linalg import eigsh
        except ImportError:
            eigsh = None
        if eigsh is not None:
            A = S.numpy()
            etol = tol if tol is not None else DEFAULT_TOL[S.dtype]

            def scipy_eigsh():
                top = eigsh(A, k=1, which="LA", tol=etol, return_eigenvectors=False)
                bottom = eigsh(A, k=1, sigma=0.0, which="LM", tol=etol, return_eigenvectors=False)
                return float(bottom[0]), float(top[0])

            out["eigsh"] = (scipy_eigsh, lambda r: r)
    return out, done


def converged(S, rtol, tol, v0_min=None, v0_max=None, num_iters=None) -> str:
    """Whether condnum's solve of S met its tol in num_iters steps (None: the functional
    API's defaults), read from the op's err output (the functional API's warning fires on
    the CPU only): "yes" or "no". rtol None: top_eigh, else extreme_eigh with that rtol."""
    n, t = F._budget(S, num_iters, tol)
    if rtol is None:
        err = ops.top_eigh(S, n, t, None)[2]
    else:
        err = ops.extreme_eigh(S, n, rtol, t, v0_min, v0_max)[4]
    return "yes" if err.item() <= t else "no"


def step_columns(steps: dict, base_ms: float) -> dict[str, float]:
    """lz_step / si_step: our step time over torch's for the same work (nan: no such step);
    steps per solve, step_floor = base_ms over the time of those steps alone, and runs (the
    steps by Krylov run)."""
    if not steps:
        return {}
    cols = {
        col: steps[kind]["ratio"] if kind in steps else math.nan
        for col, kind in (("lz_step", "lanczos"), ("si_step", "shift_invert"))
    }
    cols["steps"] = sum(steps[k]["steps"] for k in ("lanczos", "shift_invert") if k in steps)
    cols["step_floor"] = base_ms / steps["floor_ms"] if steps["floor_ms"] > 0 else math.nan
    cols["runs"] = steps["runs"]
    return cols


def main() -> None:
    p = H.parser(__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS)
    p.add_argument(
        "--spectra", nargs="*", default=None, help="kind:kappa pairs, e.g. geometric:1e4 wishart:0"
    )
    p.add_argument(
        "--tol",
        choices=["default", "target"],
        default="default",
        help="tol passed to the iterative solvers: the library default "
        "(1e-4 float32 / 1e-7 float64) or the target accuracy (1e-3 / 1e-4)",
    )
    args = p.parse_args()
    device = H.setup(args)
    ds = args.d or ([256] if args.quick else [256, 768, 1024, 2048])
    spectra = SPECTRA if not args.quick else QUICK_SPECTRA
    if args.spectra:
        spectra = [(s.split(":")[0], float(s.split(":")[1])) for s in args.spectra]
    mrt = args.min_run_time or (0.05 if args.quick else 0.3)
    env = H.environment(device)
    env["tol"] = args.tol
    table = H.Table(
        args.name or "bench_eigh",
        [
            "d",
            "dtype",
            "spectrum",
            "kappa",
            "method",
            "ms",
            "eigvalsh_ms",
            "speedup",
            "err_min",
            "err_max",
            "target",
            "lz_step",
            "si_step",
            "steps",
            "step_floor",
            "converged",
            "runs",
        ],
        env,
        key=["d", "dtype", "spectrum", "kappa", "method"],
        compare=args.compare,
        time_column="ms",
    )
    for d in ds:
        for dtype in H.dtypes(args):
            for kind, kappa in spectra:
                S = H.matrix(kind, d, kappa, dtype, device)
                rtol = dtype_rtol(S)
                ref_min, ref_max = reference.float64_extremes(S, rtol)
                tol = TARGET_TOL[dtype] if args.tol == "target" else None
                steps = {}  # method -> step costs of its solve (CPU only)
                if device.type == "cpu":
                    for method, op in (("ours", "extreme_eigh"), ("ours_top", "top_eigh")):
                        if method in args.methods:
                            steps[method] = _steps.step_costs(S, rtol, tol, op)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # unconverged solvers report via err
                    run, done = runners(S, rtol, tol, args.methods)
                    calls = {name: fn for name, (fn, _) in run.items()}
                    calls.setdefault("eigvalsh", lambda: torch.linalg.eigvalsh(S))  # noqa: B023
                    times = H.alternate(calls, mrt)
                    base = times["eigvalsh"]
                    for name, (fn, extract) in run.items():
                        ms = times[name]
                        lam_min, lam_max = extract(fn())
                        e_min = math.nan if math.isnan(lam_min) else H.rel_err(lam_min, ref_min)
                        e_max = H.rel_err(lam_max, ref_max)
                        errs = [e for e in (e_min, e_max) if not math.isnan(e)]
                        ok = max(errs) <= TARGET_TOL[dtype] and base / ms >= 10
                        table.add(
                            d=d,
                            dtype=str(dtype).removeprefix("torch."),
                            spectrum=kind,
                            kappa=kappa if not math.isnan(kappa) else "MP",
                            method=name,
                            ms=ms,
                            eigvalsh_ms=base,
                            speedup=base / ms,
                            err_min=e_min,
                            err_max=e_max,
                            target="met" if ok else "-",
                            converged=done[name]() if name in done else "",
                            **step_columns(steps.get(name, {}), base),
                        )
    table.save(args.name)


if __name__ == "__main__":
    main()
