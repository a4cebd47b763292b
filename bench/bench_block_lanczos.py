"""How many passes over S a block Lanczos lam_max would take, against top_eigh's steps.

top_eigh runs single-vector Lanczos until lam_max is accepted, with the restart check
alongside: a second run from an independent pseudo-random start, in lockstep, both runs'
products one pass over S. A block Lanczos whose start block is [top_eigh's start, b - 1
independent pseudo-random vectors] holds the check's random start in its own Krylov space,
and it reads S once per pass for b vectors. This bench counts, for each S:

  steps        top_eigh's solver steps per call (the native kernel, run + check);
  passes       its passes over S per call (a paired step, one step of each run, is one);
  passes_b     block products S [q_1 .. q_b] until the top Ritz value is accepted by
               top_eigh's rule (residual bound ||S y - theta y|| <= tol |theta| at two
               consecutive checks, the first check after _policy.FIRST_CHECK passes);
               b = 1 is the first run alone;
  err_b        that value's relative error against float64 eigvalsh;
  product_b    one block product's time over one S v (this run, this machine; the faster
               of S @ V and V^T S, as bench_block_products.py times them);
  est_b        passes_b * product_b / passes: the block solver's product time over
               top_eigh's, each of top_eigh's passes taken at one product (its paired
               product reads S once: 1.02-1.04x one product at d = 768 on an AMD EPYC),
               a lower bound on the time ratio (the orthogonalisation grows with b, and
               the checks of a banded T cost more than those of a tridiagonal).

The block solver is a reference written for this count, not a condnum solver: full
reorthogonalisation (two classical Gram-Schmidt passes), QR of each new block, and a
dense float64 eigh of the block tridiagonal T at every pass.

    python bench/bench_block_lanczos.py --quick
    python bench/bench_block_lanczos.py --d 768 --blocks 1 2 4
"""

from __future__ import annotations

import warnings

import _harness as H
import _steps
import torch

from condnum import _policy
from condnum import functional as F
from condnum.defaults import DEFAULT_TOL
from condnum.portable.lanczos import pseudo_random_unit

QUICK_SPECTRA = [("geometric", 1e4)]


def block_tridiagonal(A: list[torch.Tensor], B: list[torch.Tensor]) -> torch.Tensor:
    """T = V^T S V in float64 from its diagonal blocks A_i and subdiagonal blocks B_i."""
    b = A[0].shape[0]
    n = len(A) * b
    T = torch.zeros(n, n, dtype=torch.float64)
    for i, Ai in enumerate(A):
        T[i * b : (i + 1) * b, i * b : (i + 1) * b] = (Ai + Ai.mT).double() / 2
    for i, Bi in enumerate(B[: len(A) - 1]):
        T[(i + 1) * b : (i + 2) * b, i * b : (i + 1) * b] = Bi.double()
        T[i * b : (i + 1) * b, (i + 1) * b : (i + 2) * b] = Bi.double().mT
    return T


def block_passes(S: torch.Tensor, b: int, tol: float, max_passes: int) -> tuple[int, float]:
    """(passes, theta): block products until the top Ritz value of the block Krylov space
    of S from [start, b - 1 pseudo-random vectors] is accepted; theta that value."""
    d = S.shape[0]
    X = torch.stack([pseudo_random_unit(d, torch.float64, S.device, k) for k in range(b)], 1)
    Q = torch.linalg.qr(X)[0].to(S.dtype)
    blocks, A, B = [Q], [], []
    last_ok, theta = -2, float("nan")
    for j in range(1, max_passes + 1):
        W = S @ blocks[-1]
        A.append(blocks[-1].mT @ W)
        V = torch.cat(blocks, 1)
        for _ in range(2):
            W = W - V @ (V.mT @ W)
        Q, R = torch.linalg.qr(W)
        B.append(R)
        values, vectors = torch.linalg.eigh(block_tridiagonal(A, B))
        theta = float(values[-1])
        if j < _policy.FIRST_CHECK:
            blocks.append(Q)
            continue
        bound = float(torch.linalg.vector_norm(R.double() @ vectors[-b:, -1]))
        ok = bound <= tol * abs(theta)
        if ok and last_ok == j - 1:
            return j, theta
        if ok:
            last_ok = j
        blocks.append(Q)
    return max_passes, theta


def main() -> None:
    p = H.parser(__doc__.split("\n")[0])
    p.add_argument("--blocks", type=int, nargs="*", default=[1, 2, 4], help="block sizes b")
    args = p.parse_args()
    if any(b < 1 for b in args.blocks):
        p.error(f"--blocks: block sizes must be >= 1, got {args.blocks}")
    device = H.setup(args)
    ds = args.d or ([128] if args.quick else [768])
    mrt = args.min_run_time or (0.05 if args.quick else 0.5)
    columns = ["d", "dtype", "spectrum", "kappa", "steps", "passes"]
    for b in args.blocks:
        columns += [f"passes_{b}", f"err_{b}", f"product_{b}", f"est_{b}"]
    table = H.Table(
        args.name or "bench_block_lanczos",
        columns,
        H.environment(device),
        key=["d", "dtype", "spectrum", "kappa"],
        compare=args.compare,
        time_column=None,
    )
    cases = H.matrix_cases(args, ds, QUICK_SPECTRA if args.quick else H.SOLVER_SPECTRA, device)
    for d, dtype, kind, kappa, S in cases:
        lam = float(torch.linalg.eigvalsh(S.double())[-1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unconverged solve reports via err
            steps = _steps.steps_per_call(lambda: F.top_eigh(S))  # noqa: B023
            passes = _steps.passes_per_call(lambda: F.top_eigh(S))  # noqa: B023
        v = S[0].clone()
        t_mv = H.timeit(lambda: torch.mv(S, v), mrt)  # noqa: B023
        row = {"d": d, "dtype": str(dtype).removeprefix("torch."), "spectrum": kind}
        row.update(kappa=kappa, steps=steps, passes=passes)
        for b in args.blocks:
            block, theta = block_passes(S, b, DEFAULT_TOL[dtype], max(8, 2 * d // b))
            Vt = torch.randn(b, d, dtype=dtype, device=device)
            V = Vt.mT.contiguous()
            rows_ms = H.timeit(lambda: Vt @ S, mrt)  # noqa: B023
            cols_ms = H.timeit(lambda: S @ V, mrt)  # noqa: B023
            product = min(rows_ms, cols_ms) / t_mv
            row[f"passes_{b}"] = block
            row[f"err_{b}"] = abs(theta - lam) / lam
            row[f"product_{b}"] = product
            row[f"est_{b}"] = block * product / passes
        table.add(**row)
    table.save(args.name)


if __name__ == "__main__":
    main()
