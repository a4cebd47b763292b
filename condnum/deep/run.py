"""``condnum immunize imagenet``: the paper's deep experiment (Table 3), end to end.

1. Build the timm model with its ImageNet weights (theta_0) and load the data.
2. Immunize the last block and head (:func:`condnum.deep.train.immunize_model`), with
   checkpoints and ``--resume``; under ``torchrun`` every rank trains, rank 0 measures.
3. Measure theta_0 (kept in memory) and theta_I on the same rows: ImageNet top-1, the
   features of the evaluation rows; RIR relative to theta_0 under both kappa rules and both
   group protocols; the attacker's linear probe on the harmful features of both models.
4. Write ``immunized.pt`` (a state_dict for the same timm architecture),
   ``results.json`` and the plots.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from condnum.deep import data, evaluate, models, plots
from condnum.deep.config import RunConfig
from condnum.deep.probe import probe_features
from condnum.deep.train import autocast_dtype, immunize_model

__all__ = ["run_imagenet", "run_probe"]

EVAL_BATCH = 64


def _distributed() -> tuple[dist.ProcessGroup | None, int]:
    """(process group, local rank) under torchrun (WORLD_SIZE > 1), else (None, 0)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.group.WORLD, int(os.environ.get("LOCAL_RANK", "0"))


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def run_imagenet(
    *,
    arch: str,
    imagenet: str | Path,
    harmful: str,
    harmful_data: str | Path,
    weights: str | Path | None,
    out: str | Path,
    cfg: RunConfig,
    config_name: str,
    seed: int = 0,
    resume: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Run the experiment; returns the results dict on rank 0 (None on other ranks)."""
    t_start = time.perf_counter()
    group, local_rank = _distributed()
    rank = dist.get_rank() if group is not None else 0
    device = _device(local_rank)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    tf_train, tf_eval = (
        data.transform(cfg.augment, cfg.image_size),
        data.transform(False, cfg.image_size),
    )
    sets = {
        "train": data.imagenet_split(imagenet, "train", tf_train),
        "val": data.imagenet_split(imagenet, "val", tf_eval),
        "harm_fit": data.harmful_split(harmful, harmful_data, "train", tf_train),
        "harm_train": data.harmful_split(harmful, harmful_data, "train", tf_eval),
        "harm_test": data.harmful_split(harmful, harmful_data, "test", tf_eval),
    }
    model = models.build_model(arch, weights, model_kwargs=model_kwargs).to(device)
    if len(sets["train"].classes) != model.num_classes:
        raise ValueError(
            f"--imagenet {imagenet}: {len(sets['train'].classes)} class folders, but the "
            f"model has {model.num_classes} classes"
        )
    d = model.num_features
    n = {k: len(sets[k]) for k in ("val", "harm_train", "harm_test")}
    sizes = evaluate.eval_sizes(cfg, d, n["val"], n["harm_train"], n["harm_test"])
    rows = evaluate.rows_for(sizes, n, seed)

    net = models.FeatureModel(model)
    theta_0 = copy.deepcopy(net).eval()
    kw = dict(
        batch=EVAL_BATCH,
        device=device,
        workers=cfg.workers,
        autocast=autocast_dtype(cfg.amp, device),
        progress=progress and rank == 0,
    )

    block, head = models.trainable_parameters(model, arch)
    t0 = time.perf_counter()
    state = immunize_model(net, block, head, sets["train"], sets["harm_fit"], cfg, out=out,
                           seed=seed, device=device, resume=resume, process_group=group,
                           progress=progress)  # fmt: skip
    t_train = time.perf_counter() - t0
    if rank != 0:  # rank 0 alone measures both models
        dist.destroy_process_group()
        return None
    t0 = time.perf_counter()
    net.eval()
    m0 = evaluate.measure_model(theta_0, theta_0.features, sets, rows, sizes, **kw)
    mI = evaluate.measure_model(net, net.features, sets, rows, sizes, **kw)
    rir = evaluate.rir_protocols(m0.Z_P, mI.Z_P, m0.Z_H[: sizes.rir_pool], mI.Z_H[: sizes.rir_pool],
                                 sizes, groups=cfg.rir_groups, seed=seed)  # fmt: skip
    probes = {name: evaluate.attack(m, sizes, cfg.attack_epochs, progress)
              for name, m in (("theta0", m0), ("immunized", mI))}  # fmt: skip
    t_eval = time.perf_counter() - t0

    torch.save(model.state_dict(), out / "immunized.pt")
    paper = rir["groups_of_100"]["paper"]
    results: dict[str, Any] = {
        "arch": arch,
        "timm_model": models.ARCHS[arch].timm_name,
        "model_kwargs": model_kwargs or {},
        "harmful": harmful,
        "features_d": d,
        "config_name": config_name,
        "config": dataclasses.asdict(cfg),
        "seed": seed,
        "paths": {
            "imagenet": str(imagenet),
            "harmful_data": str(harmful_data),
            "weights": str(weights) if weights else "timm cache",
        },  # fmt: skip
        "RIR_theta0": paper["rir"],
        "i": paper["i"],
        "ii": paper["ii"],
        "rir": rir,
        "imagenet_top1": {"theta0": m0.top1, "immunized": mI.top1, "images": sizes.top1},
        "attack": {
            "epochs": cfg.attack_epochs,
            "train_images": sizes.attack_train,
            "test_images": sizes.attack_test,
            "test_accuracy": {k: p.test_accuracy.tolist() for k, p in probes.items()},
        },
        "eval_sizes": dataclasses.asdict(sizes),
        "training": {
            "steps": state.step,
            "skipped_steps": state.skipped,
            "history": state.history,
        },  # fmt: skip
        "world_size": dist.get_world_size() if group is not None else 1,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "wall_time_s": {
            "train": t_train,
            "evaluate": t_eval,
            "total": time.perf_counter() - t_start,
        },  # fmt: skip
        "resumed": resume,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plots.plot_attack(results["attack"]["test_accuracy"], out / "attacker_accuracy.png",
                      title=f"{arch}: linear probe on {harmful} (frozen features)")  # fmt: skip
    plots.plot_training(state.history, out / "training.png", title=f"{arch} vs {harmful}")
    if group is not None:
        dist.destroy_process_group()
    return results


def run_probe(
    *,
    arch: str,
    weights: str | Path,
    reference: str | Path | None,
    harmful: str,
    harmful_data: str | Path,
    out: str | Path,
    epochs: int = 500,
    train_images: int = 5000,
    test_images: int = 2000,
    image_size: int = 224,
    workers: int = 8,
    seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The attacker on checkpoint ``weights`` (and ``reference``): ``probe.json``, a plot."""
    device = _device(0)
    tf = data.transform(False, image_size)
    sets = {s: data.harmful_split(harmful, harmful_data, s, tf) for s in ("train", "test")}
    sets = {"harm_train": sets["train"], "harm_test": sets["test"]}
    n_train, n_test = (
        min(train_images, len(sets["harm_train"])),
        min(test_images, len(sets["harm_test"])),
    )
    rows = {
        "harm_train": evaluate.seeded_rows(len(sets["harm_train"]), n_train, seed + 2),
        "harm_test": evaluate.seeded_rows(len(sets["harm_test"]), n_test, seed + 1),
    }
    checkpoints = {"checkpoint": weights, **({"reference": reference} if reference else {})}
    curves = {}
    for name, path in checkpoints.items():
        net = models.FeatureModel(models.build_model(arch, path, model_kwargs=model_kwargs))
        net = net.to(device).eval()
        Z_H, y_H, Z_Ht, y_Ht = evaluate.harmful_features(
            net.features, sets, rows, batch=EVAL_BATCH, device=device, workers=workers,
            autocast=autocast_dtype("auto", device), progress=progress,
        )  # fmt: skip
        probe = probe_features(Z_Ht, y_Ht, Z_H, y_H, epochs=epochs, progress=progress)
        curves[name] = probe.test_accuracy.tolist()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"arch": arch, "harmful": harmful, "weights": {k: str(v) for k, v in checkpoints.items()},
           "train_images": n_train, "test_images": n_test, "epochs": epochs, "seed": seed,
           "test_accuracy": curves}  # fmt: skip
    (out / "probe.json").write_text(json.dumps(res, indent=1))
    plots.plot_attack(curves, out / "attacker_accuracy.png",
                      title=f"{arch}: linear probe on {harmful} (frozen features)")  # fmt: skip
    return res
