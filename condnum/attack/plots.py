"""Convergence plot of the attacker suite (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from condnum.attack.problem import VIEWS
from condnum.attack.suite import SuiteResult

__all__ = ["plot_suite"]

#: Excess losses are drawn down to this floor (below it: float64 rounding).
FLOOR = 1e-16


def plot_suite(results: Sequence[SuiteResult], path: str | Path, *, title: str = "") -> Path:
    """One row per task, one column per view: excess loss ``(L - L*)/(L_0 - L*)`` against
    gradient evaluations, each attacker's best run, raw inputs dotted, immunized solid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = [v for v in VIEWS if any(key[1] == v for r in results for key in r.verdicts)]
    fig, axes = plt.subplots(len(results), len(views), figsize=(4.6 * len(views),
                             3.6 * len(results)), squeeze=False)  # fmt: skip
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, res in enumerate(results):
        attackers = list(dict.fromkeys(a for a, _ in res.verdicts))
        for col, view in enumerate(views):
            ax = axes[row, col]
            for k, name in enumerate(attackers):
                d = res.verdicts[(name, view)]
                c = colors[k % len(colors)]
                for run, style in ((d.raw, ":"), (d.immunized, "-")):
                    evals, excess = run.curve
                    ax.semilogy(evals, [max(e, FLOOR) for e in excess], style, color=c,
                                label=name if style == "-" else None)  # fmt: skip
            ax.axhline(res.tol, color="gray", lw=0.8)
            ax.set_title(f"{res.task}, {view}")
            ax.set_xlabel("gradient evaluations")
            ax.set_ylabel(r"$(L - L^*) / (L_0 - L^*)$")
            ax.set_ylim(FLOOR, 10)
    axes[0, -1].legend(fontsize=6, title="solid: immunized, dotted: raw", title_fontsize=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
