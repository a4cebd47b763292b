"""Per-step cost of the deep immunization pipeline (ResNet18, ViT-B/16) with random weights.

One training step of ``condnum immunize imagenet`` at a batch of B primary + B harmful
images (224 px): the forward of the 2B images through the timm model, label-smoothed
cross-entropy, ``lam_P R_well(Z_P) + lam_H R_ill(Z_H)`` (the paper's lambdas for the Cars
configs) and the backward into the trained last block and head
(:func:`condnum.deep.train.immunization_loss`, the function the trainer calls):

  step_ms       the whole step (forward + backward) with the regularizers;
  no_reg_ms     the same step with lam_P = lam_H = 0 (the regularizers are not called);
  reg_ms        the regularizers alone on the step's features: R_well(Z_P) + R_ill(Z_H)
                forward + backward to Z (B x d features, the B x B Gram since B < d);
  reg_frac      reg_ms / step_ms, the regularizers' share of a step;
  reg_share     (step_ms - no_reg_ms) / step_ms, the same share by difference (noisy when
                the share is below the run-to-run noise of the whole step).

``k = min(B, d)``, the rank of a batch's Gram (``--k`` of the command): with k = d and
B < d, R_ill's ``D(S)`` can be negative and RIll refuses the batch.

    python bench/bench_deep_step.py --threads 1 --stat min  # B = 8, CPU
    python bench/bench_deep_step.py --device cuda --batch 64
"""

from __future__ import annotations

import _harness as H
import torch

import condnum
from condnum.deep import models
from condnum.deep.config import PAPER_CONFIGS
from condnum.deep.train import autocast_dtype, immunization_loss
from condnum.immunize import ImmunizationLoss


def measure(
    arch: str, B: int, size: int, device: torch.device, amp: torch.dtype | None, mrt: float
) -> dict:
    """One row: the step with and without the regularizers, and the regularizers alone."""
    import timm

    torch.manual_seed(0)
    extra = {"img_size": size} if arch == "vit_b_16" else {}
    model = timm.create_model(models.ARCHS[arch].timm_name, pretrained=False, **extra)
    model = model.to(device).eval()
    models.trainable_parameters(model, arch)
    net = models.FeatureModel(model)
    cfg = PAPER_CONFIGS[f"{arch}-cars"]
    x_p, x_h = (torch.randn(B, 3, size, size, device=device) for _ in range(2))
    y_p = torch.randint(0, model.num_classes, (B,), device=device)
    k = min(B, model.num_features)  # the Gram's rank (module doc)

    def step(loss: ImmunizationLoss) -> None:
        model.zero_grad(set_to_none=True)
        immunization_loss(net, loss, x_p, y_p, x_h, amp=amp).backward()

    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32,
                                         enabled=amp is not None):  # fmt: skip
        Z = net.features(torch.cat([x_p, x_h]))
    Z_P, Z_H = (z.detach().requires_grad_() for z in (Z[:B], Z[B:]))
    r_well, r_ill = condnum.RWell(k), condnum.RIll(k)

    def regularizers() -> None:
        (cfg.lam_p * r_well(Z_P) + cfg.lam_h * r_ill(Z_H)).backward()

    with_reg = ImmunizationLoss(cfg.lam_p, cfg.lam_h, k=k, balance="fixed")  # kept: warm starts
    step_ms = H.timeit(lambda: step(with_reg), mrt)
    no_reg_ms = H.timeit(lambda: step(ImmunizationLoss(0.0, 0.0, balance="fixed")), mrt)
    reg_ms = H.timeit(regularizers, mrt)
    return dict(
        arch=arch,
        d=model.num_features,
        B=B,
        image=size,
        amp=str(amp).removeprefix("torch.") if amp else "float32",
        step_ms=step_ms,
        no_reg_ms=no_reg_ms,
        reg_ms=reg_ms,
        reg_frac=reg_ms / step_ms,
        reg_share=(step_ms - no_reg_ms) / step_ms,
    )


def main() -> None:
    p = H.parser(__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8, help="images per set per step (B)")
    p.add_argument("--arch", nargs="*", default=sorted(models.ARCHS), choices=sorted(models.ARCHS))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"])
    args = p.parse_args()
    device = H.setup(args)
    size = 32 if args.quick else args.image_size
    mrt = args.min_run_time or (0.05 if args.quick else 1.0)
    table = H.Table(
        args.name or "bench_deep_step",
        ["arch", "d", "B", "image", "amp", "step_ms", "no_reg_ms", "reg_ms", "reg_frac",
         "reg_share"],
        H.environment(device),
        key=["arch", "B", "image", "amp"],
        compare=args.compare,
        time_column="step_ms",
    )  # fmt: skip
    amp = autocast_dtype(args.amp, device)
    for arch in args.arch:
        table.add(**measure(arch, args.batch, size, device, amp, mrt))
    table.save(args.name)


if __name__ == "__main__":
    main()
