"""What a block Krylov step could save: S @ [v_1 .. v_k] against k matrix-vector products.

A Lanczos step reads all of S for one product S v. A block method (block Lanczos, or the
restart check run beside the first run instead of after it) would read S once for k
vectors, so its steps cost one block product where k single steps cost `k * mv_ms`. The
block is timed in both layouts, since BLAS libraries treat them differently: `cols_ms`,
S @ V with V (d, k); `rows_ms`, V^T S with V^T stored as k contiguous rows (S symmetric,
so it is (S V)^T; a Lanczos basis is stored as rows). `best_over_mv` = the faster of the
two over mv_ms is what one block step costs in single steps: below k it saves, at k
nothing. Products through torch (the machine's BLAS: MKL on x86 CPUs, cuBLAS on CUDA), in
S's dtype. With ``--row-panels`` (CPU), `panels_ms` times the rows layout with S split into
one panel per thread (bench/_row_panels.py), and `panels_over_mv` is its time over one mv:
whether splitting S by hand beats the BLAS's own threading of the small product.
On the CPU, `own_mv_ms` times the native solver's own product kernel
(``torch.ops.condnum._matvec``) for one vector and, for k = 2, `own_ms` its paired product
(one pass over S for both vectors; nan for other k), with `own_over_mv` = own_ms / mv_ms;
`tri_mv_ms`, `tri_ms` and `tri_over_mv` the same for the kernel the plain Lanczos steps use,
which reads only S's upper triangle (``torch.ops.condnum._symmetric_matvec``).

    python bench/bench_block_products.py --quick
    python bench/bench_block_products.py --d 768 2048 --k 2 4 --name block_products
    python bench/bench_block_products.py --d 768 2048 --k 2 4 --threads 2 --row-panels
"""

from __future__ import annotations

import math

import _harness as H
import torch
from _row_panels import row_panel_product


def main() -> None:
    p = H.parser(__doc__.split("\n")[0])
    p.add_argument("--k", type=int, nargs="*", default=[2, 4], help="block sizes")
    p.add_argument(
        "--row-panels", action="store_true", help="also time row panels of S, one per thread"
    )
    args = p.parse_args()
    if any(k < 1 for k in args.k):
        p.error(f"--k: block sizes must be >= 1, got {args.k}")
    device = H.setup(args)
    if args.row_panels and device.type != "cpu":
        p.error("--row-panels times a CPU product: use --device cpu")
    panels = ["panels_ms", "panels_over_mv"] if args.row_panels else []
    own = ["own_mv_ms", "own_ms", "own_over_mv", "tri_mv_ms", "tri_ms", "tri_over_mv"]
    own = own if device.type == "cpu" else []
    ds = args.d or ([256] if args.quick else [768, 2048])
    mrt = args.min_run_time or (0.05 if args.quick else 0.5)
    table = H.Table(
        args.name or "bench_block_products",
        ["d", "dtype", "k", "mv_ms", "cols_ms", "rows_ms", "best_over_mv", "saving_vs_k_steps"]
        + own
        + panels,
        H.environment(device),
        key=["d", "dtype", "k"],
        compare=args.compare,
        time_column="rows_ms",
    )
    for d in ds:
        for dtype in H.dtypes(args):
            S = H.matrix("geometric", d, 1e4, dtype=dtype, device=device)
            gen = torch.Generator(device=device).manual_seed(0)
            v = torch.randn(d, dtype=dtype, device=device, generator=gen)
            t_mv = H.timeit(lambda: torch.mv(S, v), mrt)  # noqa: B023
            kernels = {"own": torch.ops.condnum._matvec, "tri": torch.ops.condnum._symmetric_matvec}
            if own:
                t_one = {name: H.timeit(lambda: f(S, v), mrt) for name, f in kernels.items()}  # noqa: B023
            for k in args.k:
                Vt = torch.randn(k, d, dtype=dtype, device=device, generator=gen)
                V = Vt.T.contiguous()
                t_cols = H.timeit(lambda: S @ V, mrt)  # noqa: B023
                t_rows = H.timeit(lambda: Vt @ S, mrt)  # noqa: B023
                best = min(t_cols, t_rows)
                extra = {}
                for name, f in kernels.items() if own else ():
                    t_pair = math.nan
                    if k == 2:
                        torch.testing.assert_close(f(S, Vt), Vt @ S)
                        t_pair = H.timeit(lambda: f(S, Vt), mrt)  # noqa: B023
                    extra |= {
                        f"{name}_mv_ms": t_one[name],
                        f"{name}_ms": t_pair,
                        f"{name}_over_mv": t_pair / t_mv,
                    }
                if args.row_panels:
                    torch.testing.assert_close(row_panel_product(S, Vt), Vt @ S)
                    t_panels = H.timeit(lambda: row_panel_product(S, Vt), mrt)  # noqa: B023
                    extra |= {"panels_ms": t_panels, "panels_over_mv": t_panels / t_mv}
                table.add(
                    d=d,
                    dtype=str(dtype).removeprefix("torch."),
                    k=k,
                    mv_ms=t_mv,
                    cols_ms=t_cols,
                    rows_ms=t_rows,
                    best_over_mv=best / t_mv,
                    saving_vs_k_steps=1 - best / (k * t_mv),
                    **extra,
                )
    table.save(args.name)


if __name__ == "__main__":
    main()
