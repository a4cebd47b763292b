"""The attacker suite's tasks on the paper's data, and running and saving the suite on them.

- House Prices: the primary task (``LotArea`` on ``D_P``) and the harmful task
  (``SalePrice`` on ``D_H``), regression, 200 training and 100 test rows each;
- MNIST, ordered pair ``(P, H)`` (an extractor from ``condnum immunize mnist``): ``P``-vs-rest
  (primary) and ``H``-vs-rest (harmful) binary classification on the 10 000 test-set
  images, fitted on even rows and tested on odd rows;
- scikit-learn digits: two binary digit tasks, as ``condnum demo`` immunizes them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from condnum import datasets, metrics
from condnum.attack.plots import plot_suite
from condnum.attack.suite import SuiteResult, run_suite

__all__ = [
    "SuiteTask",
    "digits_tasks",
    "house_prices_tasks",
    "kappa_summary",
    "mnist_tasks",
    "run_tasks",
    "write_suite",
]


@dataclass(frozen=True, eq=False)
class SuiteTask:
    """Training and test rows of one task; ``classification`` picks the probe's targets."""

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    classification: bool


def house_prices_tasks(pair: datasets.TaskPair) -> list[SuiteTask]:
    """``[primary LotArea, harmful SalePrice]`` from :func:`datasets.load_house_prices`."""
    return [
        SuiteTask(f"{role} ({target})", t.X_train, t.y_train, t.X_test, t.y_test, False)
        for role, target, t in (("primary", "LotArea", pair.primary),
                                ("harmful", "SalePrice", pair.harmful))
    ]  # fmt: skip


def digits_tasks(
    images: torch.Tensor,
    labels: torch.Tensor,
    primary: tuple[int, int],
    harmful: tuple[int, int],
    *,
    seed: int = 0,
) -> list[SuiteTask]:
    """Binary tasks ``a`` vs ``b`` (:func:`datasets.digit_pair_task`, same seed as the demo)."""
    out = []
    for role, (a, b) in (("primary", primary), ("harmful", harmful)):
        t = datasets.digit_pair_task(images, labels, a, b, seed=seed)
        out.append(SuiteTask(f"{role} ({a} vs {b})", t.X_train, t.y_train, t.X_test,
                             t.y_test, True))  # fmt: skip
    return out


def mnist_tasks(images: torch.Tensor, labels: torch.Tensor, p: int, h: int) -> list[SuiteTask]:
    """``P``-vs-rest and ``H``-vs-rest on all images; even rows train, odd rows test."""
    if images.ndim != 2 or labels.shape != (images.shape[0],):
        raise ValueError(f"images (N, D) and labels (N,) expected, got {tuple(images.shape)}, "
                         f"{tuple(labels.shape)}")  # fmt: skip
    X = images.double()
    return [
        SuiteTask(f"{role} ({d} vs rest)", X[0::2], (labels[0::2] == d).long(), X[1::2],
                  (labels[1::2] == d).long(), True)
        for role, d in (("primary", p), ("harmful", h))
    ]  # fmt: skip


def kappa_summary(X: torch.Tensor, theta: torch.Tensor, bias: torch.Tensor | None = None):
    """``{"raw": {rule: kappa}, "immunized": {rule: kappa}}`` of ``Z^T Z`` under both rules
    (:func:`condnum.metrics.kappa_features`, float64 eigvalsh), plus the relative rule's
    measurable ceiling and whether a value sits near it."""
    Z = X.double() @ theta.double() + (0 if bias is None else bias.double())
    out: dict[str, Any] = {}
    for which, F in (("raw", X.double()), ("immunized", Z)):
        k = {rule: metrics.kappa_features(F, rule, backend="eigvalsh") for rule in metrics.RULES}
        k["relative_near_ceiling"] = metrics.near_ceiling(k["relative"])
        out[which] = k
    out["relative_ceiling"] = metrics.measurable_ceiling()
    return out


def run_tasks(
    tasks: Sequence[SuiteTask],
    theta: torch.Tensor,
    bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> list[SuiteResult]:
    """:func:`~condnum.attack.suite.run_suite` on each task (keyword arguments passed on)."""
    return [
        run_suite(t.X_train, t.y_train, theta, bias, t.X_test, t.y_test, task=t.name,
                  classification=t.classification, **kwargs)
        for t in tasks
    ]  # fmt: skip


def write_suite(
    out_dir: str | Path,
    tasks: Sequence[SuiteTask],
    results: Sequence[SuiteResult],
    theta: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    title: str = "",
) -> dict[str, Any]:
    """Write ``attack_suite.json`` and ``attack_convergence.png`` to ``out_dir``; return the
    JSON payload (per task: the suite's verdicts, its table and the kappas of both rules)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        t.name: {**r.to_json(), "table": r.table(), "kappa": kappa_summary(t.X_train, theta, bias)}
        for t, r in zip(tasks, results, strict=True)
    }
    (out_dir / "attack_suite.json").write_text(json.dumps(payload, indent=2))
    plot_suite(results, out_dir / "attack_convergence.png", title=title)
    return payload
