"""Figures: the attacker's norm-ratio curves (the paper's Fig. 1), kappa during immunization,
and the ln RIR heatmap over digit pairs (Fig. 2). matplotlib's Agg backend, PNG files."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from condnum._figures import pyplot, save_figure

if TYPE_CHECKING:
    from condnum.immunize.runs import Attack

__all__ = ["plot_kappa_history", "plot_norm_ratios", "plot_rir_heatmap"]

#: Curves are drawn down to float64 resolution; below it they are rounding noise.
FLOOR = 1e-16


def plot_norm_ratios(attacks: Mapping[str, Attack], path: str | Path, *, title: str = "") -> Path:
    """The attacker per task, raw vs immunized features: norm ratio (top, the paper's Fig. 1)
    ``||w_t - w*||^2 / ||w_0 - w*||^2`` and excess loss (bottom) ``(L_t - L*)/(L_0 - L*)``.

    ``attacks`` maps a task name (e.g. ``"primary D_P"``) to a :class:`runs.Attack`.
    """
    plt = pyplot()
    n = len(attacks)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 6.2), squeeze=False, sharex="col")
    for col, (task, a) in enumerate(attacks.items()):
        for probe, excess, label, style in (
            (a.raw, a.excess[0], "without immunization", "-"),
            (a.immunized, a.excess[1], "immunized", "--"),
        ):
            lab = f"{label} (κ={probe.kappa:.2g})"
            axes[0, col].semilogy(probe.norm_ratio.clamp(min=FLOOR), style, label=lab)
            axes[1, col].semilogy(excess.clamp(min=FLOOR), style, label=lab)
        axes[0, col].set_title(task)
        axes[0, col].set_ylabel(r"$\|w_t - w^*\|^2 / \|w_0 - w^*\|^2$")
        axes[1, col].set_ylabel(r"$(L_t - L^*) / (L_0 - L^*)$")
        axes[1, col].set_xlabel("attacker's gradient steps (exact line search)")
        axes[0, col].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, plt, path)


def plot_kappa_history(
    history: Mapping[str, Sequence[float]], path: str | Path, *, title: str = ""
) -> Path:
    """``kappa(H_P)`` and ``kappa(H_H)`` per accepted iteration (log scale)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key, label in (("kappa_P", "κ(H_P) primary"), ("kappa_H", "κ(H_H) harmful")):
        if history.get(key):
            ax.semilogy(history[key], label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("condition number")
    ax.set_title(title or "immunization")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, plt, path)


def plot_rir_heatmap(rir: torch.Tensor, path: str | Path, *, title: str = "ln RIR") -> Path:
    """Heatmap of ``ln RIR`` for ordered digit pairs: ``rir[p, h]`` (NaN where not run)."""
    plt = pyplot()
    if rir.shape != (10, 10):
        raise ValueError(f"rir must be (10, 10), got {tuple(rir.shape)}")
    ln = torch.where(rir > 0, rir.double().log(), torch.full_like(rir.double(), math.nan))
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    im = ax.imshow(ln.numpy(), cmap="viridis")
    for p in range(10):
        for h in range(10):
            if math.isfinite(float(ln[p, h])):
                ax.text(
                    h, p, f"{float(ln[p, h]):.1f}", ha="center", va="center", fontsize=6, color="w"
                )
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("harmful digit H")
    ax.set_ylabel("primary digit P")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return save_figure(fig, plt, path)
