"""The attacker suite: every attacker, in every view, on raw inputs and on immunized features.

For one task (training rows ``X``, targets ``y``, optional test rows) and one extractor
``Z = X theta + bias``, each attacker of :func:`~condnum.attack.attackers.default_attackers`
minimises the probe's quadratic (:mod:`condnum.attack.problem`) twice per view: on the
raw inputs ``X`` (the identity extractor, the baseline) and on the immunized features
``Z``. Measures per run:

- ``evals``: gradient evaluations until the excess loss ``(L - L*) / (L_0 - L*)`` is at
  most ``tol`` (1 %), None when the budget runs out first;
- ``test``: the test metric after ``epochs`` evaluations (accuracy for classification,
  MSE for regression), when test rows are given.

The slowdown of an attacker in a view is ``evals(immunized) / evals(raw)``; when the
immunized run misses the budget it is reported as the lower bound ``budget / evals(raw)``.
Where the attacker has a finite-termination bound (conjugate gradient, the closed form),
the largest slowdown any affine extractor could force in exact arithmetic,
``max_evals(r_affine) / evals(raw)`` (:mod:`condnum.attack.bounds`), is reported beside it.
For an attacker with a grid, the member with the fewest evaluations (then the lowest final
excess loss) is reported, separately on raw and on immunized features: the attacker tunes
for the features it has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from condnum.attack.attackers import Attacker, Trace, default_attackers
from condnum.attack.bounds import affine_rank
from condnum.attack.problem import VIEWS, View, make_problem

__all__ = ["Run", "SuiteResult", "Verdict", "run_suite"]

BUDGET, TOL = 2000, 1e-2


@dataclass(frozen=True)
class Run:
    """One attacker (best grid member) on one set of features in one view."""

    label: str
    evals: int | None
    final_excess: float
    test: float | None
    curve: tuple[tuple[int, ...], tuple[float, ...]]  # (evaluations, excess loss)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "evals": self.evals, "final_excess": self.final_excess,
                "test": self.test}  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """An attacker in one view: raw inputs against immunized features, and the slowdown."""

    attacker: str
    view: str
    raw: Run
    immunized: Run
    budget: int
    max_evals: int | None = None  # exact-arithmetic bound for any affine extractor

    @property
    def slowdown(self) -> float | None:
        """``evals(immunized) / evals(raw)``; ``budget / evals(raw)`` (a lower bound) when
        the immunized run missed the budget; None when the raw run did."""
        if self.raw.evals is None:
            return None
        imm = self.budget if self.immunized.evals is None else self.immunized.evals
        return imm / max(self.raw.evals, 1)

    @property
    def max_slowdown(self) -> float | None:
        """``max_evals / evals(raw)``: the largest slowdown any affine extractor could force
        in exact arithmetic; None without a known bound or when the raw run missed."""
        if self.max_evals is None or self.raw.evals is None:
            return None
        return self.max_evals / max(self.raw.evals, 1)

    @property
    def lower_bound(self) -> bool:
        """Whether :attr:`slowdown` is only a lower bound (immunized run over budget)."""
        return self.immunized.evals is None and self.raw.evals is not None

    def to_json(self) -> dict[str, Any]:
        return {"attacker": self.attacker, "view": self.view, "raw": self.raw.to_json(),
                "immunized": self.immunized.to_json(), "slowdown": self.slowdown,
                "slowdown_is_lower_bound": self.lower_bound, "max_evals": self.max_evals,
                "max_slowdown_exact_arithmetic": self.max_slowdown}  # fmt: skip


@dataclass
class SuiteResult:
    """All verdicts of one task: ``verdicts[(attacker, view)]``."""

    task: str
    classification: bool
    budget: int
    tol: float
    epochs: int
    verdicts: dict[tuple[str, str], Verdict] = field(default_factory=dict)

    def table(self) -> str:
        """Rows: attackers; columns: per view, evaluations raw → immunized and the slowdown."""
        views = sorted({v for _, v in self.verdicts}, key=VIEWS.index)
        attackers = list(dict.fromkeys(a for a, _ in self.verdicts))
        header = ["attacker", *[f"{v}: evals raw → imm (slowdown)" for v in views]]
        if self.classification:
            header += [f"{v}: test acc @{self.epochs}" for v in views]
        rows = []
        for a in attackers:
            row = [a]
            for v in views:
                d = self.verdicts[(a, v)]
                s = d.slowdown
                cell = "-" if s is None else (f"≥{s:.3g}×" if d.lower_bound else f"{s:.3g}×")
                if d.max_slowdown is not None:
                    cell += f"; max {d.max_slowdown:.3g}×"
                row.append(f"{_evals(d.raw, self.budget)} → {_evals(d.immunized, self.budget)}"
                           f" ({cell})")  # fmt: skip
            if self.classification:
                for v in views:
                    d = self.verdicts[(a, v)]
                    row.append(f"{_metric(d.raw.test)} → {_metric(d.immunized.test)}")
            rows.append(row)
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                 for r in [header, *rows]]  # fmt: skip
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join([
            f"{self.task}: gradient evaluations until the excess loss ≤ {self.tol:g} "
            f"(budget {self.budget}; >{self.budget}: not reached), raw inputs → immunized "
            "features; slowdown = immunized / raw (≥: lower bound); max: the largest slowdown "
            "any affine extractor could force (exact arithmetic)", *lines,
        ])  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "classification": self.classification,
                "budget": self.budget, "tol": self.tol, "epochs": self.epochs,
                "verdicts": [d.to_json() for d in self.verdicts.values()]}  # fmt: skip


def _evals(run: Run, budget: int) -> str:
    return f">{budget}" if run.evals is None else str(run.evals)


def _metric(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _best(members: list[Attacker], problem, budget: int, tol: float, epochs: int) -> Run:
    runs = []
    for attacker in members:
        trace = Trace(problem, budget=budget, tol=tol, epochs=epochs)
        attacker.run(problem, trace)
        runs.append(Run(attacker.label, trace.evals_to_tol, trace.excess[-1], trace.at_epochs,
                        (tuple(trace.evals), tuple(trace.excess))))  # fmt: skip

    def key(r: Run) -> tuple[float, float]:
        final = r.final_excess if math.isfinite(r.final_excess) else math.inf
        return (math.inf if r.evals is None else r.evals, final)

    return min(runs, key=key)


def run_suite(
    X_train: torch.Tensor,
    y_train: torch.Tensor,
    theta: torch.Tensor,
    bias: torch.Tensor | None = None,
    X_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    *,
    task: str = "task",
    classification: bool = False,
    budget: int = BUDGET,
    tol: float = TOL,
    epochs: int = 100,
    views: tuple[View, ...] = VIEWS,
    attackers: list[list[Attacker]] | None = None,
    progress: bool = True,
) -> SuiteResult:
    """Run the suite on raw inputs ``X`` and on features ``X theta + bias`` (module doc).

    Args:
        X_train: (n, D_in) inputs; y_train: (n,) regression targets or class labels.
        theta: (D_in, d) extractor; bias: (d,) or None.
        X_test, y_test: optional held-out rows for the test metric.
        classification: least-squares classifier on one-hot targets (with an intercept)
            instead of the regression probe.
        budget: gradient evaluations per run; tol: excess-loss tolerance;
        epochs: evaluations after which the test metric is taken (classification).
        views: any of ``"released"``, ``"standardized"``, ``"whitened"``.
        attackers: lists of grid members (default :func:`default_attackers`).

    Raises:
        ValueError: ``theta`` does not match ``X`` (shape), NaN/Inf in the inputs or the
            features, bad targets, an unknown view.
    """
    if not isinstance(theta, torch.Tensor) or theta.ndim != 2:
        raise ValueError(f"theta must be a (D_in, d) matrix, got {getattr(theta, 'shape', theta)}")
    if X_train.ndim != 2 or theta.shape[0] != X_train.shape[1]:
        raise ValueError(
            f"the extractor expects {theta.shape[0]} input features, the data has "
            f"{tuple(X_train.shape)} (rows, features): wrong extractor for this task?"
        )
    if bias is not None and bias.shape != (theta.shape[1],):
        raise ValueError(f"bias must be ({theta.shape[1]},), got {tuple(bias.shape)}")
    if not bool(torch.isfinite(theta).all()) or (
        bias is not None and not torch.isfinite(bias).all()
    ):
        raise ValueError("the extractor (theta or bias) contains NaN or Inf")
    for v in views:
        if v not in VIEWS:
            raise ValueError(f"views must be among {VIEWS}, got {v!r}")

    def features(X: torch.Tensor | None) -> torch.Tensor | None:
        if X is None:
            return None
        Z = X.detach().double() @ theta.detach().double()
        return Z if bias is None else Z + bias.detach().double()

    inputs = {"raw": (X_train, X_test), "immunized": (features(X_train), features(X_test))}
    attackers = default_attackers() if attackers is None else attackers
    result = SuiteResult(task, classification, budget, tol, epochs if classification else 0)
    jobs = [(v, m) for v in views for m in attackers]
    bar = tqdm(jobs, desc=f"attacker suite ({task})", disable=not progress)
    problems: dict[tuple[str, str], Any] = {}
    ranks = {v: affine_rank(X_train, v, classification=classification) for v in views}
    for view, members in bar:
        bar.set_postfix(view=view, attacker=members[0].name)
        runs = []
        for which, (Ztr, Zte) in inputs.items():
            if (view, which) not in problems:
                problems[(view, which)] = make_problem(
                    Ztr, y_train, Zte, y_test, view=view, classification=classification
                )
            runs.append(_best(members, problems[(view, which)], budget, tol, result.epochs))
        result.verdicts[(members[0].name, view)] = Verdict(
            members[0].name, view, *runs, budget, members[0].max_evals(ranks[view])
        )
    return result
