"""Figures of a deep run: the attacker's accuracy curves and the training losses (PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from condnum._figures import pyplot, save_figure

__all__ = ["plot_attack", "plot_training"]


def plot_attack(curves: Mapping[str, Sequence[float]], path: str | Path, *, title: str) -> Path:
    """Harmful test accuracy of the linear probe per epoch, one curve per model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for model, acc in curves.items():
        ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], label=model)
    ax.set(xlabel="attacker epochs (full-batch GD)", ylabel="test accuracy (%)", title=title,
           xscale="log")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, plt, path)


def plot_training(history: Mapping[str, Sequence[float]], path: str | Path, *, title: str) -> Path:
    """Task loss, R_well and R_ill per step (R on a log scale)."""
    plt = pyplot()
    keys = ("task", "r_well", "r_ill")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        values = history.get(key, [])
        ax.plot(range(1, len(values) + 1), values)
        positive = bool(values) and min(values) > 0
        ax.set(xlabel="step", title=key, yscale="log" if key != "task" and positive else "linear")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, plt, path)
