"""Hessian-vector products of R_ill + R_well in the features: condnum vs the eigvalsh reference.

For features Z (N, d) and a direction V (Gaussian), each method computes ``H V``, ``H`` the
Hessian in Z of L = R_ill(Z^T Z) + R_well(Z^T Z), by double backward
(``torch.autograd.functional.hvp``):
  ours       condnum.functional (cold solves at --tol; the second backward solves one
             float64 system with S - mu I per eigenpair)
  reference  eigvalsh with autograd (torch.linalg.eigh's backward, differentiated again)
`speedup` is reference time / ours in the same run; hvp_err is the relative error of H V
against the float64 reference's.

    python bench/bench_hvp.py --quick
    python bench/bench_hvp.py --d 768 --N 4096
"""

from __future__ import annotations

import warnings

import _harness as H
import torch
from bench_regularizers import loss_reference

from condnum import functional as F


def hvp(loss_fn, Z: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.hvp(loss_fn, Z, V)[1]


def main() -> None:
    p = H.parser(__doc__.split("\n")[0])
    H.add_sample_sizes(p)
    p.add_argument("--spectrum", default="geometric:1e4", help="spectrum of Z^T Z, kind:kappa")
    p.add_argument("--tol", type=float, default=None, help="our solves' tol (default: dtype's)")
    args = p.parse_args()
    device = H.setup(args)
    ds = args.d or ([64] if args.quick else [256, 768])
    kind, kappa = args.spectrum.split(":")[0], float(args.spectrum.split(":")[1])
    mrt = args.min_run_time or (0.05 if args.quick else 0.5)
    env = H.environment(device)
    env["spectrum"], env["tol"] = args.spectrum, args.tol
    table = H.Table(
        args.name or "bench_hvp",
        ["N", "d", "dtype", "ours_ms", "reference_ms", "speedup", "hvp_err", "reference_err"],
        env,
        key=["N", "d", "dtype"],
        compare=args.compare,
        time_column="ours_ms",
    )

    def loss_ours(Z: torch.Tensor) -> torch.Tensor:
        S = F.gram(Z)
        return F.r_ill(S, tol=args.tol) + F.r_well(S, tol=args.tol)

    for d, N, dtype, Z in H.feature_cases(args, ds, kind, kappa, device):
        V = torch.randn(Z.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        exact = hvp(loss_reference, Z.double(), V.to(device))
        V = V.to(dtype=dtype, device=device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times = H.alternate(
                {
                    "ours": lambda: hvp(loss_ours, Z, V),  # noqa: B023
                    "reference": lambda: hvp(loss_reference, Z, V),  # noqa: B023
                },
                mrt,
            )
            errs = {
                name: ((hvp(fn, Z, V).double() - exact).norm() / exact.norm()).item()
                for name, fn in (("ours", loss_ours), ("reference", loss_reference))
            }
        table.add(
            N=N,
            d=d,
            dtype=str(dtype).removeprefix("torch."),
            ours_ms=times["ours"],
            reference_ms=times["reference"],
            speedup=times["reference"] / times["ours"],
            hvp_err=errs["ours"],
            reference_err=errs["reference"],
        )
    table.save(args.name)


if __name__ == "__main__":
    main()
