"""Command-line front ends of the deep pipeline (registered by :mod:`condnum.cli`).

    condnum immunize imagenet --arch resnet18|vit_b_16 --imagenet DIR
        --harmful cars|country211 --harmful-data DIR [--weights PATH] --out DIR
        [--config PAPER_CONFIG|FILE] [--seed N] [--resume] [overrides...]
    condnum probe-deep --arch A --weights CKPT [--reference-weights PATH]
        --harmful cars|country211 --harmful-data DIR --out DIR

Every :class:`~condnum.deep.config.RunConfig` field can be overridden (``--epochs``,
``--batch``, ``--lr``, ``--lam-p``, ``--lam-h``, ...). Multi-GPU:
``torchrun --nproc-per-node 8 -m condnum immunize imagenet ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from condnum.deep.config import PAPER_CONFIGS, RunConfig

__all__ = ["add_imagenet_parser", "add_probe_parser", "imagenet_command", "probe_command"]

HARMFUL = ("cars", "country211")
ARCH_CHOICES = ("resnet18", "vit_b_16")


def _model_kwargs(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--model-kwargs must be a JSON object: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--model-kwargs must be a JSON object, got {text!r}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--arch", required=True, choices=ARCH_CHOICES, help="timm resnet18 or vit_base_patch16_224"
    )
    p.add_argument("--harmful", required=True, choices=HARMFUL)
    p.add_argument("--harmful-data", required=True,
                   help="DIR/{train,test}/<class>/* or torchvision's layout")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--model-kwargs",
        type=_model_kwargs,
        default=None,
        help="JSON for timm.create_model (e.g. a small model for smoke runs)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_imagenet_parser(which) -> None:
    p = which.add_parser("imagenet", help="ImageNet ResNet18 / ViT-B against Cars / Country211 "
                                          "(the paper's Table 3)")  # fmt: skip
    _common(p)
    p.add_argument("--imagenet", required=True, help="DIR with train/<wnid>/ and val/<wnid>/")
    p.add_argument("--weights", default=None,
                   help="ImageNet weights file (default: timm's local cache)")  # fmt: skip
    p.add_argument("--config", default=None,
                   help=f"one of {sorted(PAPER_CONFIGS)} or a JSON file of overrides "
                        "(default: the paper's config for --arch/--harmful)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    over = p.add_argument_group("overrides of the config (default: the config's value)")
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        base = str(f.type).split("|")[0].strip()  # "int | None" -> "int"
        if base == "bool":
            over.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                              default=None)  # fmt: skip
        else:
            kind = {"int": int, "float": float, "str": str}[base]
            over.add_argument(flag, dest=f.name, type=kind, default=None)


def add_probe_parser(sub) -> None:
    p = sub.add_parser("probe-deep", help="the linear-probe attacker on a deep checkpoint")
    _common(p)
    p.add_argument("--weights", required=True, help="the checkpoint to attack (a state_dict)")
    p.add_argument("--reference-weights", default=None,
                   help="a second checkpoint (e.g. theta_0) attacked on the same rows")  # fmt: skip
    p.add_argument("--epochs", type=int, default=500, help="attacker's epochs")
    p.add_argument("--train-images", type=int, default=5000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=8)


def imagenet_command(args: argparse.Namespace) -> int:
    from condnum.deep.config import resolve_config
    from condnum.deep.run import run_imagenet

    fields = [f.name for f in dataclasses.fields(RunConfig)]
    cfg = resolve_config(args.arch, args.harmful, args.config,
                         {k: getattr(args, k) for k in fields})  # fmt: skip
    res = run_imagenet(
        arch=args.arch, imagenet=args.imagenet, harmful=args.harmful,
        harmful_data=args.harmful_data, weights=args.weights, out=args.out, cfg=cfg,
        config_name=args.config or f"{args.arch}-{args.harmful}", seed=args.seed,
        resume=args.resume, model_kwargs=args.model_kwargs, progress=not args.no_progress,
    )  # fmt: skip
    if res is not None:
        top = res["imagenet_top1"]
        print(
            f"RIR_theta0 {res['RIR_theta0']:.4g} ((i) {res['i']:.4g}, (ii) {res['ii']:.4g}; "
            f"paper's κ rule, {cfg.rir_groups} groups of {cfg.rir_group_size}); ImageNet top-1 "
            f"{100 * top['theta0']:.2f} → {100 * top['immunized']:.2f} %; wrote "
            f"{Path(args.out) / 'results.json'}, immunized.pt, attacker_accuracy.png, training.png"
        )
    return 0


def probe_command(args: argparse.Namespace) -> int:
    from condnum.deep.run import run_probe

    res = run_probe(
        arch=args.arch, weights=args.weights, reference=args.reference_weights,
        harmful=args.harmful, harmful_data=args.harmful_data, out=args.out,
        epochs=args.epochs, train_images=args.train_images, test_images=args.test_images,
        image_size=args.image_size, workers=args.workers, seed=args.seed,
        model_kwargs=args.model_kwargs, progress=not args.no_progress,
    )  # fmt: skip
    for name, acc in res["test_accuracy"].items():
        print(f"{name}: harmful test accuracy {100 * acc[0]:.1f} % after 1 epoch, "
              f"{100 * acc[-1]:.1f} % after {len(acc)}")  # fmt: skip
    return 0
