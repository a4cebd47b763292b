"""The bad actor on a deep model: a softmax linear probe on frozen features.

:func:`probe_features` runs :func:`condnum.attack.linear_probe_classifier` (full-batch
gradient descent from zero) with the best fixed step for the probe's curvature,
``lr = 1 / lambda_max([Z, 1]^T [Z, 1] / N)``, chosen per model, so a slower attack on the
immunized features comes from their conditioning and not from a step tuned to the
initial model. :func:`extract_features` computes a model's frozen features of a set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from condnum.attack import ClassifierProbe, linear_probe_classifier

__all__ = ["extract_features", "probe_features", "probe_lr"]


def probe_lr(Z: torch.Tensor) -> float:
    """``1 / lambda_max([Z, 1]^T [Z, 1] / N)`` in float64: the step of plain GD on the probe."""
    Z1 = torch.cat([Z.double(), torch.ones(Z.shape[0], 1, dtype=torch.float64)], dim=1)
    return 1.0 / float(torch.linalg.eigvalsh(Z1.T @ Z1 / Z1.shape[0])[-1])


def probe_features(
    Z_train: torch.Tensor,
    y_train: torch.Tensor,
    Z_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    epochs: int,
    progress: bool = False,
) -> ClassifierProbe:
    """Softmax probe on frozen features (float64), step :func:`probe_lr` of ``Z_train``."""
    Z_train, Z_test = Z_train.detach().double(), Z_test.detach().double()
    return linear_probe_classifier(
        Z_train, y_train, Z_test, y_test, epochs=epochs, lr=probe_lr(Z_train), progress=progress
    )


@torch.no_grad()
def extract_features(
    forward: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]],
    dataset,
    indices: Sequence[int],
    *,
    batch: int,
    device: torch.device,
    workers: int = 0,
    autocast: torch.dtype | None = None,
    desc: str = "features",
    progress: bool = True,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``forward`` over ``dataset[indices]`` in order; returns (outputs, labels) on the CPU.

    ``forward`` returns a tensor or a tuple of tensors (each concatenated over batches,
    in float32); labels are the dataset's.
    """
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch, num_workers=workers,
                        pin_memory=device.type == "cuda")  # fmt: skip
    outs: list[list[torch.Tensor]] = []
    labels = []
    for x, y in tqdm(loader, desc=desc, disable=not progress):
        with torch.autocast(
            device.type, dtype=autocast or torch.float32, enabled=autocast is not None
        ):
            out = forward(x.to(device, non_blocking=True))
        out = out if isinstance(out, tuple) else (out,)
        outs.append([o.float().cpu() for o in out])
        labels.append(torch.as_tensor(y))
    return [torch.cat(parts) for parts in zip(*outs, strict=True)], torch.cat(labels)
