"""R_ill + R_well forward + backward from features Z: condnum vs the eigvalsh reference.

Each method computes L = R_ill(Z^T Z) + R_well(Z^T Z) and dL/dZ for features Z (N, d):
  ours        S = condnum.functional.gram(Z); r_ill(S) + r_well(S)   (cold solves)
  ours_module condnum.RIll()(Z) + condnum.RWell()(Z), modules kept across calls, so each
              solve is warm-started from the previous call's vectors; the calls alternate
              between Z and a perturbed Z (I + 1e-3 E), like consecutive training steps
  reference   S = Z^T Z (one shared S); condnum.reference.r_ill(S) + r_well(S): eigvalsh
              with autograd, as the authors wrote it
`speedup` is reference time / method time in the same run; value_err and grad_err are
relative errors of L and of dL/dZ against the float64 reference.

--parts adds a second table with the parts of `ours` timed alone: the Gram (SYRK), the
backward's one GEMM 2 Z G, floored_min (r_ill's solve and floor test) and top_eigh (cold),
and what they imply: floor_speedup = reference / (gram + gemm), the best ratio reachable
with a free eigen-solve, and budget_3x_ms = reference / 3 - gram - gemm, the time a 3x bar
leaves for everything else.

    python bench/bench_regularizers.py --quick
    python bench/bench_regularizers.py --d 768 --N 4096 --name reg_768
    python bench/bench_regularizers.py --d 768 --N 4096 --methods reference --parts
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import _harness as H
import torch

import condnum
from condnum import functional as F
from condnum import reference as R

METHODS = ["ours", "ours_module", "reference"]


def loss_ours(Z: torch.Tensor) -> torch.Tensor:
    S = F.gram(Z)
    return F.r_ill(S) + F.r_well(S)


def loss_reference(Z: torch.Tensor) -> torch.Tensor:
    S = Z.T @ Z
    return R.r_ill(S) + R.r_well(S)


def fwd_bwd(loss_fn, Z: torch.Tensor) -> tuple[float, torch.Tensor]:
    Z = Z.detach().requires_grad_()
    loss = loss_fn(Z)
    loss.backward()
    return loss.item(), Z.grad


def time_parts(Z: torch.Tensor, mrt: float, reference_ms: float) -> dict[str, Any]:
    """The parts of `ours` timed alone (cold solves), and the floor they set (module doc)."""
    S = F.gram(Z)
    gram_ms = H.timeit(lambda: F.gram(Z), mrt)
    gemm_ms = H.timeit(lambda: Z @ S, mrt)  # S stands in for dL/dS: dense, symmetric, d x d
    return {
        "N": Z.shape[0],
        "d": Z.shape[1],
        "dtype": str(Z.dtype).removeprefix("torch."),
        "gram_ms": gram_ms,
        "gemm_ms": gemm_ms,
        "floored_min_ms": H.timeit(lambda: F.floored_min(S), mrt),
        "top_eigh_ms": H.timeit(lambda: F.top_eigh(S), mrt),
        "reference_ms": reference_ms,
        "floor_speedup": reference_ms / (gram_ms + gemm_ms),
        "budget_3x_ms": reference_ms / 3 - gram_ms - gemm_ms,
    }


def main() -> None:
    p = H.parser(__doc__.split("\n")[0])
    H.add_sample_sizes(p)
    p.add_argument(
        "--spectrum",
        default="geometric:1e4",
        help="spectrum of Z^T Z as kind:kappa (wishart: Gaussian Z)",
    )
    p.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS)
    p.add_argument("--parts", action="store_true", help="also time the parts of `ours` alone")
    args = p.parse_args()
    device = H.setup(args)
    ds = args.d or ([256] if args.quick else [256, 768, 1024, 2048])
    kind, kappa = args.spectrum.split(":")[0], float(args.spectrum.split(":")[1])
    mrt = args.min_run_time or (0.05 if args.quick else 0.3)
    env = H.environment(device)
    env["spectrum"] = args.spectrum
    table = H.Table(
        args.name or "bench_regularizers",
        ["N", "d", "dtype", "method", "ms", "reference_ms", "speedup", "value_err", "grad_err"],
        env,
        key=["N", "d", "dtype", "method"],
        compare=args.compare,
        time_column="ms",
    )
    part_rows = []
    for d in ds:
        for N in H.sample_sizes(args, d):
            for dtype in H.dtypes(args):
                Z = H.features(kind, N, d, kappa, dtype, device)
                M = torch.eye(d, dtype=torch.float64) + 1e-3 * torch.randn(
                    d, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64
                ) / math.sqrt(d)
                Z2 = (Z.double().cpu() @ M).to(dtype=dtype, device=device)
                ref_val, ref_grad = fwd_bwd(loss_reference, Z.double())
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ref_ms = H.timeit(lambda: fwd_bwd(loss_reference, Z), mrt)  # noqa: B023
                    for name in args.methods:
                        if name == "reference":
                            fn, ms = (lambda: fwd_bwd(loss_reference, Z)), ref_ms  # noqa: B023
                        elif name == "ours":
                            fn = lambda: fwd_bwd(loss_ours, Z)  # noqa: B023, E731
                            ms = H.timeit(fn, mrt)
                        else:
                            r_ill, r_well = condnum.RIll().to(device), condnum.RWell().to(device)
                            state = {"i": 0}

                            def fn(r_ill=r_ill, r_well=r_well, state=state, Z=Z, Z2=Z2):
                                state["i"] += 1
                                X = Z if state["i"] % 2 else Z2
                                return fwd_bwd(lambda W: r_ill(W) + r_well(W), X)

                            ms = H.timeit(fn, mrt)
                            state["i"] = 0  # the next call (measured below) is on Z
                        val, grad = fn()
                        table.add(
                            N=N,
                            d=d,
                            dtype=str(dtype).removeprefix("torch."),
                            method=name,
                            ms=ms,
                            reference_ms=ref_ms,
                            speedup=ref_ms / ms,
                            value_err=H.rel_err(val, ref_val),
                            grad_err=(
                                (grad.double().cpu() - ref_grad).norm() / ref_grad.norm()
                            ).item(),
                        )
                    if args.parts:
                        part_rows.append(time_parts(Z, mrt, ref_ms))
    table.save(args.name)
    if args.parts:
        parts = H.Table(table.name, list(part_rows[0]), env, key=["N", "d", "dtype"])
        for row in part_rows:
            parts.add(**row)
        parts.save(args.name or table.name, suffix="_parts")


if __name__ == "__main__":
    main()
