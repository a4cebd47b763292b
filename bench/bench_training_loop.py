"""A training loop with R_ill + R_well: condnum modules vs the eigvalsh reference, 50 SGD steps.

Features Z (N, d) are the trained parameter (what a feature extractor's last layer feeds
the regularizers); each step computes L = R_ill(Z^T Z) + R_well(Z^T Z), its gradient and
an SGD update, as a training step does:
  ours       S = condnum.functional.gram(Z); condnum.RIll(input="gram")(S) +
             condnum.RWell(input="gram")(S), the modules kept across steps, so every
             eigen-solve is warm-started from the previous step's vectors;
  reference  S = Z^T Z; condnum.reference.r_ill(S) + r_well(S) (eigvalsh with autograd,
             as the authors wrote it).
Both start from the same Z with the same learning rate (a relative step of 1e-3 on Z);
`speedup` is the reference loop's time over ours (one timed run each, after a warm-up
run, in the same process) and `loss_err` the relative difference of the final losses.

The parts table times each part of one step alone (medians) in the state the timed run
ended in (its features, the modules' warm-start vectors, RIll's solve precision and
tolerance): the Gram (SYRK), the eigen-solves (RIll's floored_min, whose float64 Cholesky
is both the floor test and the shift-and-invert factor, and RWell's top_eigh, warm-started
as in the loop; eigvalsh twice for the reference), the regularizer values and the loss's
backward (autograd: the regularizers' d x d gradients and the Gram's GEMM Z (G + G^T));
`other` is the rest of the step (SGD update, module bookkeeping). floor_speedup =
reference step / (gram + backward): the best ratio free eigen-solves would give.

    python bench/bench_training_loop.py --quick
    python bench/bench_training_loop.py --d 768 --N 4096 1536
"""

from __future__ import annotations

import math
import time
import warnings

import _harness as H
import torch

import condnum
from condnum import functional as F
from condnum import reference as R
from condnum._ops import ops
from condnum.defaults import dtype_rtol


def loss_reference(Z: torch.Tensor) -> torch.Tensor:
    S = Z.T @ Z
    return R.r_ill(S) + R.r_well(S)


class LossOurs:
    """R_ill + R_well of F.gram(Z) by condnum modules, kept across steps (warm starts)."""

    def __init__(self, device: torch.device) -> None:
        self.r_ill = condnum.RIll(input="gram").to(device)
        self.r_well = condnum.RWell(input="gram").to(device)

    def __call__(self, Z: torch.Tensor) -> torch.Tensor:
        S = F.gram(Z)
        return self.r_ill(S) + self.r_well(S)


def learning_rate(Z: torch.Tensor) -> float:
    """A step that moves Z by a relative 1e-3 (from the reference gradient at the start)."""
    W = Z.detach().double().requires_grad_()
    loss_reference(W).backward()
    return 1e-3 * W.norm().item() / W.grad.norm().item()


def train(loss_fn, Z0: torch.Tensor, lr: float, steps: int) -> tuple[float, float, torch.Tensor]:
    """(seconds, final loss, final features) of `steps` SGD steps from Z0."""
    Z = Z0.clone().requires_grad_()
    opt = torch.optim.SGD([Z], lr=lr)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(Z)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    return seconds, loss.item(), Z.detach()


def parts(
    Z: torch.Tensor, loss: LossOurs, case: dict, mrt: float, ours_step_ms: float, ref_step_ms: float
) -> dict:
    """Each part of one step timed alone at Z with the modules' state (module doc)."""
    S = F.gram(Z)
    # RIll's solve precision and tolerance at the last step
    S_ill = S.double() if loss.r_ill.last["float64"] else S
    tol_ill = loss.r_ill.last["tol"]
    rtol = dtype_rtol(S_ill)
    warm_ill = {"v0_min": loss.r_ill.u_min, "v0_max": loss.r_ill.u_max}
    m = F.floored_min(S_ill, rtol, tol=tol_ill, **warm_ill)
    lam_min, u_min = m.lam, m.u
    top, u_max = F.top_eigh(S, v0=loss.r_well.u_max)
    gram_ms = H.timeit(lambda: F.gram(Z), mrt)
    solve_ms = H.timeit(
        lambda: (
            F.floored_min(S_ill, rtol, tol=tol_ill, **warm_ill),
            F.top_eigh(S, v0=loss.r_well.u_max),
        ),
        mrt,
    )
    k = S.shape[0]
    reg_ms = H.timeit(
        lambda: (ops.r_ill(S_ill, lam_min, u_min, k), ops.r_well(S, top, u_max, k)), mrt
    )
    W = Z.clone().requires_grad_()
    value = loss(W)
    backward_ms = H.timeit(lambda: torch.autograd.grad(value, W, retain_graph=True), mrt)
    gemm_ms = H.timeit(lambda: Z @ S, mrt)  # the backward's GEMM alone (S stands in for G)
    eigvalsh_ms = H.timeit(lambda: torch.linalg.eigvalsh(S), mrt)
    return {
        **case,
        "ours_step_ms": ours_step_ms,
        "gram_ms": gram_ms,
        "eigensolve_ms": solve_ms,
        "regularizer_ms": reg_ms,
        "backward_ms": backward_ms,
        "backward_gemm_ms": gemm_ms,
        "other_ms": ours_step_ms - gram_ms - solve_ms - reg_ms - backward_ms,
        "reference_step_ms": ref_step_ms,
        "ref_eigvalsh_x2_ms": 2 * eigvalsh_ms,
        "floor_speedup": ref_step_ms / (gram_ms + backward_ms),
    }


def main() -> None:
    p = H.parser(__doc__.split("\n")[0])
    H.add_sample_sizes(p)
    p.add_argument("--steps", type=int, default=None, help="SGD steps (default 50)")
    p.add_argument(
        "--spectrum", default="geometric:1e4", help="spectrum of Z^T Z at the start, kind:kappa"
    )
    args = p.parse_args()
    device = H.setup(args)
    ds = args.d or ([64] if args.quick else [768])
    if args.N is None:
        args.N = [0] if args.quick else [4096, 1536]
    steps = args.steps or (3 if args.quick else 50)
    kind, kappa = args.spectrum.split(":")[0], float(args.spectrum.split(":")[1])
    mrt = args.min_run_time or (0.05 if args.quick else 0.3)
    env = H.environment(device)
    env.update(spectrum=args.spectrum, steps=steps)
    table = H.Table(
        args.name or "bench_training_loop",
        ["N", "d", "dtype", "steps", "ours_s", "reference_s", "speedup", "loss_err"],
        env,
        key=["N", "d", "dtype"],
        compare=args.compare,
        time_column="ours_s",
    )
    part_rows = []
    for d, N, dtype, Z0 in H.feature_cases(args, ds, kind, kappa, device):
        case = {"N": N, "d": d, "dtype": str(dtype).removeprefix("torch.")}
        lr = learning_rate(Z0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # float32 kappa warnings: timing only
            train(LossOurs(device), Z0, lr, min(steps, 3))  # warm-up
            ours = LossOurs(device)
            ours_s, ours_loss, Z = train(ours, Z0, lr, steps)
            ref_s, ref_loss, _ = train(loss_reference, Z0, lr, steps)
            step_ms = (1e3 * ours_s / steps, 1e3 * ref_s / steps)
            part_rows.append(parts(Z, ours, case, mrt, *step_ms))
        table.add(
            **case,
            steps=steps,
            ours_s=ours_s,
            reference_s=ref_s,
            speedup=ref_s / ours_s,
            loss_err=H.rel_err(ours_loss, ref_loss) if math.isfinite(ref_loss) else math.nan,
        )
    table.save(args.name)
    parts_table = H.Table(table.name + "_parts", list(part_rows[0]), env, key=["N", "d", "dtype"])
    for row in part_rows:
        parts_table.add(**row)
    parts_table.save(args.name or table.name, suffix="_parts")


if __name__ == "__main__":
    main()
