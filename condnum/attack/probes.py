"""The paper's attacker: linear probing on frozen features by gradient descent.

Immunization is meant to make this attack slow on the harmful task and leave it fast on
the primary one. Two attackers:

- :func:`linear_probe_least_squares`: the paper's setting. Minimise
  ``L(w) = ||Z w - y||^2 / N`` by steepest descent with exact line search and report the
  norm-ratio curve ``||w_t - w*||^2 / ||w_0 - w*||^2``; its speed is governed by
  ``kappa(Z^T Z)`` (the error contracts by at least ``((kappa - 1) / (kappa + 1))^2`` per
  step in the ``H``-norm).
- :func:`linear_probe_classifier`: logistic (2 classes) or softmax cross-entropy
  (more) with a fixed step size, reporting train loss and test accuracy per epoch.

Both work in the features' own coordinates; the probe of the least-squares attack has no
intercept (as in the paper), the classifier's has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = [
    "ClassifierProbe",
    "LeastSquaresProbe",
    "linear_probe_classifier",
    "linear_probe_least_squares",
]


def _check_features(name: str, Z: torch.Tensor) -> None:
    if Z.ndim != 2 or Z.shape[0] == 0 or Z.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, d) matrix, got shape {tuple(Z.shape)}")
    if not Z.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {Z.dtype}")
    if not bool(torch.isfinite(Z).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def _check_targets(name: str, y: torch.Tensor, n: int) -> None:
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(y.shape)}")


@dataclass(frozen=True, eq=False)
class LeastSquaresProbe:
    """Result of :func:`linear_probe_least_squares`.

    Attributes:
        norm_ratio: float64 (T+1,), ``r_t = ||P(w_t - w*)||^2 / ||P(w_0 - w*)||^2`` with
            ``P`` the projector on the row space of ``Z`` (the whole space when ``Z`` has
            full column rank); ``r_0 = 1``. An iterate whose gradient is exactly zero is
            a minimiser and gets ``r_t = 0`` (the curve ends there).
        loss: float64 (T+1,), ``L(w_t) = ||Z w_t - y||^2 / N``.
        steps_to_tol: first ``t`` with ``r_t <= tol``; None if not reached within the budget.
        tol: the tolerance used.
        w: the last iterate ``w_T``.
        w_star: the minimum-norm least-squares solution.
        kappa: ``kappa(Z^T Z) = (s_max / s_min)^2`` over the nonzero singular values of Z.
    """

    norm_ratio: torch.Tensor
    loss: torch.Tensor
    steps_to_tol: int | None
    tol: float
    w: torch.Tensor
    w_star: torch.Tensor
    kappa: float

    @property
    def steps(self) -> int:
        """Steps taken (fewer than the budget when the gradient vanished exactly)."""
        return self.norm_ratio.shape[0] - 1


def linear_probe_least_squares(
    Z: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 1000,
    tol: float = 1e-6,
    w0: torch.Tensor | None = None,
    stop_at_tol: bool = False,
    progress: bool = False,
) -> LeastSquaresProbe:
    """Fit ``w`` on frozen features by steepest descent with exact line search (float64).

    With ``H = Z^T Z`` and ``g_t = Z^T (Z w_t - y)`` (the gradient of
    ``1/2 ||Z w - y||^2``), each step is::

        alpha_t = g_t^T g_t / ||Z g_t||^2      (argmin_alpha of L(w_t - alpha g_t))
        w_{t+1} = w_t - alpha_t g_t

    The error ``||w_t - w*||`` decreases monotonically (``alpha_t`` is below the bound
    ``2 e^T H e / e^T H^2 e`` by Cauchy-Schwarz). ``w*`` is the minimum-norm solution,
    ``V_r S_r^-1 U_r^T y`` from the SVD of ``Z`` with rank cutoff
    ``s > max(N, d) * eps * s_max``; for a rank-deficient ``Z`` the iterates never move
    in the null space of ``Z``, so the error is measured in its row space.

    Args:
        Z: features (N, d), any float dtype (computed in float64).
        y: targets (N,).
        steps: iteration budget T.
        tol: ``steps_to_tol`` is the first ``t`` with ``r_t <= tol``.
        w0: start (d,); zeros by default.
        stop_at_tol: stop as soon as the tolerance is reached (curves end there).
        progress: show a tqdm bar.

    Raises:
        ValueError: bad shapes, NaN/Inf, ``steps < 0`` or ``tol <= 0``.
    """
    _check_features("Z", Z)
    _check_targets("y", y, Z.shape[0])
    if steps < 0 or not tol > 0:
        raise ValueError(f"need steps >= 0 and tol > 0, got steps={steps}, tol={tol}")
    Z = Z.detach().double()
    y = y.detach().double()
    n, d = Z.shape
    w = (
        torch.zeros(d, dtype=torch.float64, device=Z.device)
        if w0 is None
        else w0.detach().double().clone()
    )
    if w.shape != (d,):
        raise ValueError(f"w0 must have shape ({d},), got {tuple(w.shape)}")
    if not bool(torch.isfinite(y).all() and torch.isfinite(w).all()):
        raise ValueError("y or w0 contains NaN or Inf")

    U, s, Vh = torch.linalg.svd(Z, full_matrices=False)
    if s[0] == 0:
        raise ValueError("Z is all zeros: the least-squares problem has no curvature")
    r = int((s > max(n, d) * torch.finfo(torch.float64).eps * s[0]).sum())
    U, s, Vh = U[:, :r], s[:r], Vh[:r]
    w_star = Vh.T @ ((U.T @ y) / s)

    def err2(w: torch.Tensor) -> float:
        return float((Vh @ (w - w_star)).square().sum())

    residual = Z @ w - y  # kept up to date: r_{t+1} = r_t - alpha_t Z g_t
    e0 = err2(w)
    ratios, losses = [1.0 if e0 > 0 else 0.0], [float(residual @ residual) / n]
    hit = 0 if ratios[0] <= tol else None
    for t in tqdm(range(1, steps + 1), disable=not progress, desc="attack (least squares)"):
        if hit is not None and stop_at_tol:
            break
        g = Z.T @ residual
        Zg = Z @ g
        curvature = float(Zg @ Zg)
        if curvature == 0.0:  # g = 0: w is an exact minimiser, its error is rounding
            ratios[-1] = 0.0
            hit = len(ratios) - 1 if hit is None else hit
            break
        alpha = float(g @ g) / curvature
        w = w - alpha * g
        residual = residual - alpha * Zg
        ratios.append(err2(w) / e0 if e0 > 0 else 0.0)
        losses.append(float(residual @ residual) / n)
        if hit is None and ratios[-1] <= tol:
            hit = t
    return LeastSquaresProbe(
        norm_ratio=torch.tensor(ratios, dtype=torch.float64),
        loss=torch.tensor(losses, dtype=torch.float64),
        steps_to_tol=hit,
        tol=tol,
        w=w,
        w_star=w_star,
        kappa=float((s[0] / s[-1]) ** 2),
    )


@dataclass(frozen=True, eq=False)
class ClassifierProbe:
    """Result of :func:`linear_probe_classifier`; per-epoch curves have length ``epochs``.

    Attributes:
        train_loss: mean cross-entropy on the whole training set after each epoch.
        train_accuracy: fraction correct on the training set after each epoch.
        test_accuracy: the same on the test set, or None when no test set was given.
        weight: (d, 1) for two classes (logistic), (d, C) otherwise.
        bias: (1,) or (C,).
        classes: the sorted original labels; class ``k`` of the probe is ``classes[k]``.
    """

    train_loss: torch.Tensor
    train_accuracy: torch.Tensor
    test_accuracy: torch.Tensor | None
    weight: torch.Tensor
    bias: torch.Tensor
    classes: torch.Tensor

    def epochs_to_accuracy(
        self, target: float, *, split: Literal["test", "train"] = "test"
    ) -> int | None:
        """First epoch (1-based) whose ``split`` accuracy is ``>= target``; None if never."""
        acc = self.test_accuracy if split == "test" else self.train_accuracy
        if acc is None:
            raise ValueError("no test set was given to the probe")
        hits = torch.nonzero(acc >= target).flatten()
        return int(hits[0]) + 1 if hits.numel() else None


def _class_ids(name: str, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    common = torch.promote_types(classes.dtype, labels.dtype)
    classes, labels = classes.to(common), labels.to(common)
    ids_ok = torch.searchsorted(classes, labels).clamp(max=classes.numel() - 1)
    if not bool((classes[ids_ok] == labels).all()):
        unknown = sorted(set(labels.tolist()) - set(classes.tolist()))
        raise ValueError(f"{name} has labels {unknown} not seen in y_train")
    return ids_ok


def linear_probe_classifier(
    Z_train: torch.Tensor,
    y_train: torch.Tensor,
    Z_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ClassifierProbe:
    """Train a linear classifier ``logits = Z W + b`` on frozen features, fixed step size.

    Two classes: logistic regression, one logit, ``p = sigmoid(z)``; more: softmax. Both
    minimise the mean cross-entropy, whose gradient is ``Z^T (P - Y) / n`` for ``W`` and
    the column sums of ``(P - Y) / n`` for ``b`` (``Y`` the one-hot / 0-1 targets), taken
    by plain gradient descent ``W <- W - lr * grad`` from ``W = 0, b = 0``.

    Args:
        Z_train, y_train: features (N, d) and labels (N,) of any integer or float type;
            the sorted distinct labels become classes ``0..C-1``.
        Z_test, y_test: optional held-out set, for accuracy per epoch.
        epochs: passes over the training set.
        lr: fixed step size.
        batch_size: None for full-batch gradient descent (one step per epoch), else
            mini-batches of a permutation drawn from a generator seeded with ``seed``.
        progress: show a tqdm bar.

    Computed in float64 for float64 features and float32 otherwise.

    Raises:
        ValueError: bad shapes, NaN/Inf, fewer than two classes, test labels unseen in
            training, only one of ``Z_test``/``y_test``, non-positive ``epochs``/``lr``.
    """
    _check_features("Z_train", Z_train)
    _check_targets("y_train", y_train, Z_train.shape[0])
    if (Z_test is None) != (y_test is None):
        raise ValueError("give both Z_test and y_test, or neither")
    if epochs <= 0 or not lr > 0 or (batch_size is not None and batch_size <= 0):
        raise ValueError(
            f"need epochs > 0, lr > 0, batch_size > 0; got {epochs}, {lr}, {batch_size}"
        )
    classes = torch.unique(y_train)
    if classes.numel() < 2:
        raise ValueError(f"y_train has a single class {classes.tolist()}: nothing to learn")
    dtype = torch.float64 if Z_train.dtype == torch.float64 else torch.float32
    Z = Z_train.detach().to(dtype)
    ids = _class_ids("y_train", y_train, classes)
    test = None
    if Z_test is not None and y_test is not None:
        _check_features("Z_test", Z_test)
        _check_targets("y_test", y_test, Z_test.shape[0])
        if Z_test.shape[1] != Z.shape[1]:
            raise ValueError(f"Z_test has {Z_test.shape[1]} features, Z_train {Z.shape[1]}")
        test = (Z_test.detach().to(dtype), _class_ids("y_test", y_test, classes))

    binary = classes.numel() == 2
    outputs = 1 if binary else classes.numel()
    W = torch.zeros(Z.shape[1], outputs, dtype=dtype, device=Z.device)
    b = torch.zeros(outputs, dtype=dtype, device=Z.device)

    def targets(i: torch.Tensor) -> torch.Tensor:
        return i[:, None].to(dtype) if binary else F.one_hot(i, outputs).to(dtype)

    def probs(Z: torch.Tensor) -> torch.Tensor:
        logits = Z @ W + b
        return torch.sigmoid(logits) if binary else torch.softmax(logits, dim=1)

    def evaluate(Z: torch.Tensor, i: torch.Tensor) -> tuple[float, float]:
        logits = Z @ W + b
        if binary:
            loss = F.binary_cross_entropy_with_logits(logits, targets(i))
            pred = (logits[:, 0] > 0).long()
        else:
            loss = F.cross_entropy(logits, i)
            pred = logits.argmax(dim=1)
        return float(loss), float((pred == i).double().mean())

    gen = torch.Generator().manual_seed(seed)
    n = Z.shape[0]
    losses, train_acc, test_acc = [], [], []
    for _ in tqdm(range(epochs), disable=not progress, desc="attack (classifier)"):
        order = torch.arange(n) if batch_size is None else torch.randperm(n, generator=gen)
        for batch in order.split(batch_size or n):
            Zb = Z[batch]
            G = (probs(Zb) - targets(ids[batch])) / batch.numel()
            W -= lr * (Zb.T @ G)
            b -= lr * G.sum(dim=0)
        loss, acc = evaluate(Z, ids)
        losses.append(loss)
        train_acc.append(acc)
        if test is not None:
            test_acc.append(evaluate(*test)[1])
    return ClassifierProbe(
        train_loss=torch.tensor(losses, dtype=torch.float64),
        train_accuracy=torch.tensor(train_acc, dtype=torch.float64),
        test_accuracy=torch.tensor(test_acc, dtype=torch.float64) if test is not None else None,
        weight=W,
        bias=b,
        classes=classes,
    )
