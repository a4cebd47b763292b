"""The covariance kernel: condnum.functional.gram(Z) = Z^T Z vs a plain GEMM Z.T @ Z.

gram computes one triangle (half the flops of the GEMM) and mirrors it, so S is exactly
symmetric. Design bar: gram within 10% of the GEMM's time or better (ratio >= 0.9).
`err` is max|gram - Z^T Z (float64)| / max|Z^T Z| for each side.

    python bench/bench_gram.py --quick
    python bench/bench_gram.py --d 768 --name gram_768
"""

from __future__ import annotations

import _harness as H
import torch

from condnum import functional as F


def main() -> None:
    p = H.parser(__doc__.split("\n")[0])
    H.add_sample_sizes(p)
    args = p.parse_args()
    device = H.setup(args)
    ds = args.d or ([256] if args.quick else [256, 768, 1024, 2048])
    mrt = args.min_run_time or (0.05 if args.quick else 0.3)
    table = H.Table(
        args.name or "bench_gram",
        [
            "N",
            "d",
            "dtype",
            "gram_ms",
            "matmul_ms",
            "speedup",
            "gram_err",
            "matmul_err",
            "exactly_symmetric",
        ],
        H.environment(device),
        key=["N", "d", "dtype"],
        compare=args.compare,
        time_column="gram_ms",
    )
    for d in ds:
        for N in H.sample_sizes(args, d):
            for dtype in H.dtypes(args):
                Z = H.features("wishart", N, d, dtype=dtype, device=device)
                ref = (Z.double().T @ Z.double()).cpu()
                scale = ref.abs().max().item()
                S = F.gram(Z)
                G = Z.T @ Z
                t_gram = H.timeit(lambda: F.gram(Z), mrt)  # noqa: B023
                t_mm = H.timeit(lambda: Z.T @ Z, mrt)  # noqa: B023
                table.add(
                    N=N,
                    d=d,
                    dtype=str(dtype).removeprefix("torch."),
                    gram_ms=t_gram,
                    matmul_ms=t_mm,
                    speedup=t_mm / t_gram,
                    gram_err=(S.double().cpu() - ref).abs().max().item() / scale,
                    matmul_err=(G.double().cpu() - ref).abs().max().item() / scale,
                    exactly_symmetric=bool(torch.equal(S, S.T)),
                )
    table.save(args.name)


if __name__ == "__main__":
    main()
