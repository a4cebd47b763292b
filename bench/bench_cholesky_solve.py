"""The shift-and-invert operator's solve, (U^T U) x = b: condnum's own substitutions against
LAPACK's through torch, at each thread count.

`own_one_ms` / `own_two_ms`: ``torch.ops.condnum._cholesky_solve`` (the native CPU solver's
own kernel, float64) with one right-hand side and with two in one pass (a run and its restart
check); `lapack_one_ms` / `lapack_two_ms`: two ``torch.linalg.solve_triangular`` on the same
factor (``trsm`` of the machine's BLAS, the calls the native kernel makes under
``CONDNUM_MATVEC=blas``; ``torch.cholesky_solve`` took 12x longer at d = 2048 on MKL on an
AMD EPYC). `own_over_lapack` compares the paired forms; `threads_gain` is the fewest
threads' own_two_ms over this row's (same d). The
factor is that of the geometric test matrix (kappa 1e4) shifted as the solvers shift it.
Each result is checked against float64 ``torch.linalg.solve`` before it is timed. Run the
script in two builds' environments, alternately, to compare builds (`--compare`).

    python bench/bench_cholesky_solve.py --quick
    python bench/bench_cholesky_solve.py --d 512 768 2048 4096 --stat min
"""

from __future__ import annotations

import _harness as H
import torch

import condnum  # noqa: F401  (registers torch.ops.condnum)


def main() -> None:
    p = H.parser(__doc__.split("\n")[0])
    p.add_argument(
        "--thread-counts",
        type=int,
        nargs="*",
        default=None,
        help="torch.set_num_threads values to time (default: 1 and torch's default)",
    )
    args = p.parse_args()
    device = H.setup(args)
    if device.type != "cpu":
        p.error("the own Cholesky solve is a CPU kernel: use --device cpu")
    counts = args.thread_counts or sorted({1, torch.get_num_threads()})
    if any(n < 1 for n in counts):
        p.error(f"--thread-counts must be >= 1, got {counts}")
    ds = args.d or ([256] if args.quick else [512, 768, 2048])
    mrt = args.min_run_time or (0.05 if args.quick else 0.5)
    table = H.Table(
        args.name or "bench_cholesky_solve",
        ["d", "threads", "own_one_ms", "own_two_ms", "lapack_one_ms", "lapack_two_ms"]
        + ["own_over_lapack", "threads_gain"],
        H.environment(device),
        key=["d", "threads"],
        compare=args.compare,
        time_column="own_two_ms",
    )
    op = torch.ops.condnum._cholesky_solve
    for d in ds:
        S = H.matrix("geometric", d, 1e4, dtype=torch.float64)
        tau = 8 * d * torch.finfo(torch.float64).eps * torch.linalg.matrix_norm(S, 2)
        A = S + tau * torch.eye(d, dtype=torch.float64)
        L = torch.linalg.cholesky(A)
        U = L.mT.contiguous()
        b = torch.randn(2, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(op(U, b), torch.linalg.solve(A, b.T).T, rtol=1e-8, atol=0)

        def lapack(rhs: torch.Tensor) -> torch.Tensor:
            y = torch.linalg.solve_triangular(L, rhs.T, upper=False)  # noqa: B023
            return torch.linalg.solve_triangular(U, y, upper=True)  # noqa: B023

        torch.testing.assert_close(lapack(b), op(U, b).T, rtol=1e-8, atol=0)
        fewest = None
        for n in counts:
            torch.set_num_threads(n)
            own_two = H.timeit(lambda: op(U, b), mrt)  # noqa: B023
            lapack_two = H.timeit(lambda: lapack(b), mrt)  # noqa: B023
            fewest = own_two if fewest is None else fewest
            table.add(
                d=d,
                threads=n,
                own_one_ms=H.timeit(lambda: op(U, b[0]), mrt),  # noqa: B023
                own_two_ms=own_two,
                lapack_one_ms=H.timeit(lambda: lapack(b[:1]), mrt),  # noqa: B023
                lapack_two_ms=lapack_two,
                own_over_lapack=own_two / lapack_two,
                threads_gain=fewest / own_two,
            )
    table.save(args.name)


if __name__ == "__main__":
    main()
