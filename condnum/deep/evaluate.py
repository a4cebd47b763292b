"""Measuring a deep immunization: ImageNet top-1, RIR relative to theta_0, the attacker.

RIR (:func:`condnum.metrics.rir_features`) is reported under both kappa rules ("paper":
the authors' absolute 1e-6 cut; "relative": eigenvalues above 1e-12 lambda_max) and two
group protocols:

- ``groups_of_100``: the paper's, 20 random groups of 100 samples. At d = 512 or 768 a
  group's Gram ``Z^T Z`` has rank 100 < d, so under the paper's rule its smallest
  eigenvalue above 1e-6 is a jittered null direction or rounding noise, not a property
  of the features;
- ``groups_of_2d``: 20 groups of ``2 d`` samples (``rir_full_group_size``), a full-rank
  Gram whose kappa the attacker's convergence actually follows.

Rows are the first samples of a seeded permutation of each evaluation set (ImageNet val,
the harmful set's test split), the same rows for theta_0 and theta_I.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from condnum.deep.probe import extract_features, probe_features
from condnum.metrics import rir_features

__all__ = [
    "EvalSizes",
    "ModelMeasures",
    "attack",
    "eval_sizes",
    "harmful_features",
    "measure_model",
    "rir_protocols",
    "rows_for",
    "seeded_rows",
]

PROTOCOLS = ("groups_of_100", "groups_of_2d")
RULES = ("paper", "relative")


@dataclasses.dataclass(frozen=True)
class EvalSizes:
    """How many rows each measurement uses (checked against the sets before training)."""

    top1: int  # ImageNet val images for top-1
    rir_pool: int  # rows of each evaluation set whose features the RIR groups draw from
    group_sizes: dict[str, int]
    attack_train: int
    attack_test: int


def eval_sizes(cfg, d: int, n_val: int, n_harm_train: int, n_harm_test: int) -> EvalSizes:
    """Sizes from the config and the sets; ValueError when a set is too small for a group."""
    groups = {"groups_of_100": cfg.rir_group_size,
              "groups_of_2d": cfg.rir_full_group_size or 2 * d}  # fmt: skip
    pool = max(cfg.rir_groups * cfg.rir_group_size, *groups.values())
    for name, n in (("ImageNet val", n_val), ("the harmful test split", n_harm_test)):
        for protocol, size in groups.items():
            if n < size:
                raise ValueError(
                    f"{name} has {n} images, fewer than a {protocol} group of {size} "
                    f"(set rir_group_size / rir_full_group_size)"
                )
    return EvalSizes(
        top1=min(cfg.eval_limit or n_val, n_val),
        rir_pool=min(pool, n_val, n_harm_test),
        group_sizes=groups,
        attack_train=min(cfg.attack_train, n_harm_train),
        attack_test=min(cfg.attack_test, n_harm_test),
    )


def seeded_rows(n: int, count: int, seed: int) -> list[int]:
    """The first ``count`` of a seeded permutation of ``range(n)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].tolist()


def rir_protocols(
    Z_P0: torch.Tensor, Z_PI: torch.Tensor, Z_H0: torch.Tensor, Z_HI: torch.Tensor,
    sizes: EvalSizes, *, groups: int, seed: int,
) -> dict[str, dict[str, dict]]:  # fmt: skip
    """``{protocol: {rule: RIRResult as a dict}}`` for both protocols and both rules."""
    return {
        protocol: {
            rule: dataclasses.asdict(
                rir_features(
                    Z_P0, Z_PI, Z_H0, Z_HI, groups=groups, group_size=size, seed=seed, rule=rule
                )  # fmt: skip
            )
            for rule in RULES
        }
        for protocol, size in sizes.group_sizes.items()
    }


@dataclasses.dataclass
class ModelMeasures:
    """One model's measurements on the evaluation rows."""

    top1: float
    Z_P: torch.Tensor  # ImageNet val features of the RIR pool
    Z_H: torch.Tensor  # harmful test features (RIR pool and attacker's test rows)
    y_H: torch.Tensor
    Z_H_train: torch.Tensor  # harmful train features (attacker's training rows)
    y_H_train: torch.Tensor


def harmful_features(features: Callable, sets: dict, rows: dict[str, list[int]], **kw):
    """``(Z_H, y_H, Z_H_train, y_H_train)``: a model's features of the harmful rows."""
    (Z_H,), y_H = extract_features(features, sets["harm_test"], rows["harm_test"],
                                   desc="harmful test", **kw)  # fmt: skip
    (Z_Ht,), y_Ht = extract_features(features, sets["harm_train"], rows["harm_train"],
                                     desc="harmful train", **kw)  # fmt: skip
    return Z_H, y_H, Z_Ht, y_Ht


def measure_model(
    forward: Callable, features: Callable, sets: dict, rows: dict[str, list[int]], sizes: EvalSizes,
    **kw,
) -> ModelMeasures:  # fmt: skip
    """Top-1 on the first ``sizes.top1`` val rows (features kept for the pool) and the
    harmful features."""
    (Z_P, logits), y = extract_features(
        forward, sets["val"], rows["val"], desc="ImageNet val", **kw
    )
    top1 = float((logits[: sizes.top1].argmax(1) == y[: sizes.top1]).double().mean())
    return ModelMeasures(top1, Z_P[: sizes.rir_pool], *harmful_features(features, sets, rows, **kw))


def attack(m: ModelMeasures, sizes: EvalSizes, epochs: int, progress: bool):
    """The attacker's probe on this model's harmful features (train rows -> test rows)."""
    n = sizes.attack_test
    return probe_features(m.Z_H_train, m.y_H_train, m.Z_H[:n], m.y_H[:n], epochs=epochs,
                          progress=progress)  # fmt: skip


def rows_for(sizes: EvalSizes, n: dict[str, int], seed: int) -> dict[str, list[int]]:
    """Evaluation rows of each set (seeded; the same for theta_0 and theta_I)."""
    return {
        "val": seeded_rows(n["val"], max(sizes.top1, sizes.rir_pool), seed),
        "harm_test": seeded_rows(n["harm_test"], max(sizes.rir_pool, sizes.attack_test), seed + 1),
        "harm_train": seeded_rows(n["harm_train"], sizes.attack_train, seed + 2),
    }
