"""The immunization loop for a timm model: SGD on the last block and head, checkpoints, DDP.

Each step takes a primary batch ``(x_P, y_P)`` of ImageNet and a harmful batch ``x_H`` (its
labels unused), runs one forward on ``[x_P; x_H]`` (batch norm is frozen in eval mode, so
the concatenation changes nothing) and minimises::

    CE_0.1(head(Z_P), y_P) + lam_P R_well(Z_P^T Z_P) + lam_H R_ill(Z_H^T Z_H)

(:class:`condnum.immunize.ImmunizationLoss` with ``balance="fixed"``: the published lambdas
multiply the regularizers as in the paper). With ``W`` data-parallel ranks the regularizers
see the global batch's Gram (``RIll/RWell(process_group=...)``) and the lambdas are
multiplied by ``W`` because DDP averages the parameter gradients over ranks (so the step
equals single-process training on the global batch). A step whose gradient is not finite
is skipped and counted (every rank sees the same all-reduced gradient, so all skip).

Checkpoints (``checkpoint.pt`` in the output folder, written atomically every
``checkpoint_every`` steps and at the end) hold the model, the optimizer, the step and the
history; the data order is a pure function of (seed, step) (:mod:`condnum.deep.sampler`),
so ``resume`` continues with the batches the run would have seen (random crops and flips
draw afresh; without augmentation the resumed run is bit-identical).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import condnum
from condnum.deep.config import TRAINING_FIELDS, RunConfig
from condnum.deep.models import FeatureModel
from condnum.deep.sampler import StreamSampler
from condnum.immunize import ImmunizationLoss

__all__ = ["TrainState", "autocast_dtype", "immunization_loss", "immunize_model"]

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainState:
    """Steps done, steps skipped (non-finite gradient) and the per-step history."""

    step: int = 0
    skipped: int = 0
    history: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in ("loss", "task", "r_well", "r_ill")}
    )


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 for ``amp="bf16"``, or ``"auto"`` on CUDA; None (float32) otherwise."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _save_checkpoint(path: Path, net: FeatureModel, opt, loss: nn.Module, state: TrainState,
                     meta: dict) -> None:  # fmt: skip
    tmp = path.with_suffix(".tmp")
    torch.save({"model": net.model.state_dict(), "optimizer": opt.state_dict(),
                "loss": loss.state_dict(), "state": dataclasses.asdict(state), "meta": meta},
               tmp)  # fmt: skip
    os.replace(tmp, path)


def _load_checkpoint(path: Path, net: FeatureModel, opt, loss: nn.Module, meta: dict) -> TrainState:
    """Restore a checkpoint; the regularizers' buffers (warm-start eigenvectors, whose
    shape is set by their first call) are assigned, not copied."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["meta"] != meta:
        raise ValueError(
            f"--resume: {path} was written by another run ({ckpt['meta']}), not this one "
            f"({meta}); use another --out or drop --resume"
        )
    net.model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    for key, value in ckpt["loss"].items():
        owner, _, name = key.rpartition(".")
        setattr(loss.get_submodule(owner), name, value.to(loss.scale.device))
    return TrainState(**ckpt["state"])


def immunization_loss(
    model: nn.Module,
    loss: ImmunizationLoss,
    x_p: torch.Tensor,
    y_p: torch.Tensor,
    x_h: torch.Tensor,
    *,
    amp: torch.dtype | None = None,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """``CE_ls(head(Z_P), y_P) + lam_P R_well(Z_P) + lam_H R_ill(Z_H)`` from one forward.

    ``model`` maps images to ``(Z, logits)`` (:class:`~condnum.deep.models.FeatureModel`,
    possibly DDP-wrapped or compiled); the forward runs under ``autocast`` to ``amp``
    when given; the regularizers see the (possibly bf16) features, accumulating in float32.
    """
    b = x_p.shape[0]
    with torch.autocast(x_p.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        Z, logits = model(torch.cat([x_p, x_h]))
    task = F.cross_entropy(logits[:b].float(), y_p, label_smoothing=label_smoothing)
    return loss(task, Z[:b], Z[b:])


def immunize_model(
    net: FeatureModel,
    block: list[nn.Parameter],
    head: list[nn.Parameter],
    primary,
    harmful,
    cfg: RunConfig,
    *,
    out: Path,
    seed: int,
    device: torch.device,
    resume: bool = False,
    process_group: dist.ProcessGroup | None = None,
    progress: bool = True,
) -> TrainState:
    """Immunize ``net`` in place on datasets ``primary`` (images, labels) and ``harmful``.

    ``block`` / ``head``: the trained parameters (others frozen); weight decay on ``head``
    only. Under ``torch.distributed`` pass ``process_group``; each rank then takes
    ``cfg.batch / world`` samples of each set per step and rank 0 writes checkpoints.
    """
    world = dist.get_world_size(process_group) if process_group is not None else 1
    rank = dist.get_rank(process_group) if process_group is not None else 0
    if cfg.batch % world:
        raise ValueError(f"batch {cfg.batch} is not divisible by the world size {world}")
    b = cfg.batch // world
    opt = torch.optim.SGD(
        [{"params": block, "weight_decay": 0.0},
         {"params": head, "weight_decay": cfg.head_weight_decay}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
    )  # fmt: skip
    loss = ImmunizationLoss(cfg.lam_p * world, cfg.lam_h * world, k=cfg.k, balance="fixed")
    if process_group is not None:
        loss.r_well = condnum.RWell(cfg.k, process_group=process_group)
        loss.r_ill = condnum.RIll(cfg.k, process_group=process_group)
    loss.to(device)
    path = out / CHECKPOINT
    meta = {"config": {k: getattr(cfg, k) for k in TRAINING_FIELDS}, "seed": seed, "world": world}
    resuming = resume and path.is_file()
    state = _load_checkpoint(path, net, opt, loss, meta) if resuming else TrainState()

    samplers = [StreamSampler(len(ds), b, seed=seed + i, rank=rank, world=world,
                              start_batch=state.step)
                for i, ds in enumerate((primary, harmful))]  # fmt: skip
    total = cfg.epochs * samplers[0].steps_per_pass
    total = min(total, cfg.max_steps) if cfg.max_steps is not None else total
    loaders = [DataLoader(ds, batch_size=b, sampler=s, num_workers=cfg.workers, drop_last=True,
                          pin_memory=device.type == "cuda")
               for ds, s in zip((primary, harmful), samplers, strict=True)]  # fmt: skip

    net.eval()  # batch-norm statistics and dropout stay those of theta_0
    model: nn.Module = net
    if process_group is not None:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=ids, process_group=process_group
        )
    if cfg.compile:
        model = torch.compile(model)
    amp = autocast_dtype(cfg.amp, device)
    params = [*block, *head]

    bar = tqdm(total=total, initial=state.step, desc="immunize", disable=not progress or rank)
    batches = zip(*loaders, strict=False)
    while state.step < total:
        (x_p, y_p), (x_h, _) = next(batches)
        total_loss = immunization_loss(model, loss, x_p.to(device, non_blocking=True),
                                       y_p.to(device, non_blocking=True),
                                       x_h.to(device, non_blocking=True), amp=amp,
                                       label_smoothing=cfg.label_smoothing)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        total_loss.backward()
        if all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params):
            opt.step()
        else:
            state.skipped += 1
        state.step += 1
        state.history["loss"].append(float(total_loss.detach()))
        for key in ("task", "r_well", "r_ill"):
            state.history[key].append(loss.last[key])
        bar.update(1)
        bar.set_postfix(task=f"{loss.last['task']:.3g}", r_ill=f"{loss.last['r_ill']:.3g}",
                        r_well=f"{loss.last['r_well']:.3g}")  # fmt: skip
        if rank == 0 and (state.step % cfg.checkpoint_every == 0 or state.step == total):
            _save_checkpoint(path, net, opt, loss, state, meta)
    bar.close()
    return state
