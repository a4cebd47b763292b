"""Settings of a deep immunization run: the paper's four configurations and overrides.

The authors' settings (epochs, batch, lr, lam_P, lam_H), SGD with momentum 0.9 and
Nesterov, weight decay 2e-5 on the head only, label smoothing 0.1, constant learning rate:

| model / harmful set      | epochs | batch | lr    | lam_P | lam_H |
|--------------------------|--------|-------|-------|-------|-------|
| ResNet18 / Stanford Cars | 3      | 64    | 1e-5  | 5e-5  | 2e6   |
| ResNet18 / Country211    | 3      | 64    | 1e-5  | 1e-4  | 2e6   |
| ViT-B/16 / Stanford Cars | 2      | 64    | 1e-5  | 3e-6  | 3e8   |
| ViT-B/16 / Country211    | 2      | 32    | 5e-6  | 1e-6  | 1e8   |

``batch`` is the global batch of each set per step (primary and harmful); with ``W``
data-parallel ranks each takes ``batch / W``. ``k`` (the ``k`` of ``R_ill``/``R_well``)
defaults to the feature dimension d; a batch of N < d features has only N nonzero
eigenvalues, and ``k = N`` keeps ``D(S) = ||S||_F^2/(2k) - sigma_min^2/2`` positive.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PAPER_CONFIGS", "RunConfig", "resolve_config"]


@dataclass(frozen=True)
class RunConfig:
    """Every setting of ``condnum immunize imagenet`` that is not a path."""

    epochs: int
    batch: int
    lr: float
    lam_p: float
    lam_h: float
    k: int | None = None  # k of R_ill / R_well; None: the feature dimension d
    momentum: float = 0.9
    nesterov: bool = True
    head_weight_decay: float = 2e-5
    label_smoothing: float = 0.1
    image_size: int = 224
    augment: bool = True  # random resized crop + flip on training images (False: eval transform)
    max_steps: int | None = None  # stop early (budgeting, smoke runs); None: all epochs
    checkpoint_every: int = 500  # steps between checkpoints
    eval_limit: int | None = None  # ImageNet val images for top-1 (None: all)
    rir_groups: int = 20
    rir_group_size: int = 100  # the paper's protocol
    rir_full_group_size: int | None = None  # groups of >= d samples; None: 2 d
    attack_train: int = 5000  # harmful train images the attacker fits on (fewer if absent)
    attack_test: int = 2000  # harmful test images it is scored on
    attack_epochs: int = 500
    workers: int = 8
    amp: str = "auto"  # "auto" (bf16 on CUDA), "bf16", "off"
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch", "image_size", "checkpoint_every", "rir_groups",
                     "rir_group_size", "attack_train", "attack_test", "attack_epochs"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr",):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("lam_p", "lam_h", "head_weight_decay", "label_smoothing", "momentum"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {self.amp!r}")
        for name in ("k", "max_steps", "eval_limit", "rir_full_group_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")


PAPER_CONFIGS: dict[str, RunConfig] = {
    "resnet18-cars": RunConfig(epochs=3, batch=64, lr=1e-5, lam_p=5e-5, lam_h=2e6),
    "resnet18-country211": RunConfig(epochs=3, batch=64, lr=1e-5, lam_p=1e-4, lam_h=2e6),
    "vit_b_16-cars": RunConfig(epochs=2, batch=64, lr=1e-5, lam_p=3e-6, lam_h=3e8),
    "vit_b_16-country211": RunConfig(epochs=2, batch=32, lr=5e-6, lam_p=1e-6, lam_h=1e8),
}

FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
#: The fields that determine the training trajectory (a resumed run must match them).
TRAINING_FIELDS = ("epochs", "batch", "lr", "lam_p", "lam_h", "k", "momentum", "nesterov",
                   "head_weight_decay", "label_smoothing", "image_size", "augment")  # fmt: skip


def resolve_config(
    arch: str, harmful: str, config: str | None, overrides: dict[str, Any]
) -> RunConfig:
    """The paper's config for (arch, harmful), or ``config`` (a paper name or a JSON file of
    RunConfig fields over the paper's), then the non-None ``overrides``."""
    name = config or f"{arch}-{harmful}"
    if name in PAPER_CONFIGS:
        base = PAPER_CONFIGS[name]
    elif Path(name).is_file():
        values = json.loads(Path(name).read_text())
        if not isinstance(values, dict) or not set(values) <= FIELDS:
            unknown = sorted(set(values) - FIELDS) if isinstance(values, dict) else values
            raise ValueError(f"--config {name}: unknown fields {unknown}; known: {sorted(FIELDS)}")
        base = dataclasses.replace(PAPER_CONFIGS[f"{arch}-{harmful}"], **values)
    else:
        raise ValueError(
            f"--config must be one of {sorted(PAPER_CONFIGS)} or a JSON file, got {name!r}"
        )
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
