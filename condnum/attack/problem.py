"""The attacker's problem: a least-squares linear probe on frozen features, in three views.

Every attacker of the suite minimises the same quadratic, so their costs compare::

    L(W) = ||A W - Y||_F^2 / n,   grad L(W) = 2 A^T (A W - Y) / n,   Hessian 2 A^T A / n

Tall designs (n > p) are evaluated through a thin QR factorisation ``A = Q R`` (computed
once): ``||A W - Y||^2 = ||R W - Q^T Y||^2 + ||Y - Q Q^T Y||^2`` and
``A^T (A W - Y) = R^T (R W - Q^T Y)`` hold for every ``W`` (any rank), so each gradient
costs ``O(p^2 c)`` instead of ``O(n p c)`` (MNIST: 6x less) with the residual form's
accuracy. The attacker's cost is still counted in gradient evaluations.

with ``A`` (n, p) the attacker's design matrix built from the released features ``Z``
(n, d) and ``Y`` (n, c): the regression target as one column, or the one-hot class
indicators of a classification task (a least-squares classifier, predicting the argmax).
The regression probe has no intercept (the paper's attacker); the classifier's has one
(a column of ones appended to ``A``).

Views, i.e. what the attacker does to ``Z`` before probing (statistics from the training
rows, applied to the test rows too):

- ``"released"``: ``A = Z`` as released;
- ``"standardized"``: ``(Z - mean) / std`` per feature (``ddof=0``; a constant feature
  becomes 0), the routine preprocessing of a linear probe: a diagonal preconditioner;
- ``"whitened"``: centred, then ``Z V_r S_r^-1 sqrt(n)`` from the thin SVD of the centred
  ``Z`` over its numerical rank (singular values above ``max(n, d) eps s_max``), so
  ``A^T A / n = I``: the full preconditioner, after which every attacker converges at
  once whatever the extractor did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["VIEWS", "ProbeProblem", "View", "make_problem"]

View = Literal["released", "standardized", "whitened"]
VIEWS: tuple[View, ...] = ("released", "standardized", "whitened")


def _check_features(name: str, Z: torch.Tensor, n: int | None = None) -> None:
    if not isinstance(Z, torch.Tensor) or Z.ndim != 2 or Z.shape[0] == 0 or Z.shape[1] == 0:
        shape = tuple(Z.shape) if isinstance(Z, torch.Tensor) else type(Z).__name__
        raise ValueError(f"{name} must be a non-empty (N, d) matrix, got {shape}")
    if not Z.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {Z.dtype}")
    if not bool(torch.isfinite(Z).all()):
        raise ValueError(f"{name} contains NaN or Inf (check the extractor and the data)")
    if n is not None and Z.shape[1] != n:
        raise ValueError(f"{name} has {Z.shape[1]} features, the training features {n}")


def _view_maps(Z: torch.Tensor, view: View):
    """``(mean, M)`` with ``A = (Z - mean) @ M`` for ``view`` (mean 0 for ``"released"``)."""
    n, d = Z.shape
    if view == "released":
        return torch.zeros(d, dtype=Z.dtype), None
    mean = Z.mean(dim=0)
    if view == "standardized":
        std = Z.std(dim=0, correction=0)
        return mean, torch.where(std > 0, 1 / std, torch.zeros_like(std))
    if view == "whitened":
        _, s, Vh = torch.linalg.svd(Z - mean, full_matrices=False)
        if not s[0] > 0:
            return mean, torch.zeros(d, 1, dtype=Z.dtype)
        r = int((s > max(n, d) * torch.finfo(torch.float64).eps * s[0]).sum())
        return mean, Vh[:r].T * (n**0.5 / s[:r])
    raise ValueError(f"view must be one of {VIEWS}, got {view!r}")


def _apply(Z: torch.Tensor, mean: torch.Tensor, M: torch.Tensor | None, ones: bool):
    A = Z - mean
    if M is not None:
        A = A * M if M.ndim == 1 else A @ M
    if ones:
        A = torch.cat([A, torch.ones(A.shape[0], 1, dtype=A.dtype)], dim=1)
    return A


@dataclass(frozen=True, eq=False)
class ProbeProblem:
    """One attacker's quadratic (module doc), float64.

    Attributes:
        A: (n, p) training design; Y: (n, c) targets.
        A_test: (m, p) or None; y_test: (m,) regression targets or int64 class ids.
        classification: whether ``Y`` holds one-hot classes.
        W_star: (p, c) minimum-norm minimiser (``gelsd``); loss_star: ``L(W_star)``.
        loss0: ``L(0)``, the start of every attacker.
        lipschitz: ``lambda_max(2 A^T A / n)``, the gradient's Lipschitz constant.
        R, QtY, offset: the compressed design ``R`` (min(n, p), p), ``Q^T Y`` and
            ``||Y - Q Q^T Y||^2`` (``A``, ``Y`` and 0 when ``n <= p``), module doc.
    """

    A: torch.Tensor
    Y: torch.Tensor
    A_test: torch.Tensor | None
    y_test: torch.Tensor | None
    classification: bool
    W_star: torch.Tensor
    loss_star: float
    loss0: float
    lipschitz: float
    R: torch.Tensor
    QtY: torch.Tensor
    offset: float

    @property
    def n(self) -> int:
        return self.A.shape[0]

    def zeros(self) -> torch.Tensor:
        """The start ``W_0 = 0`` (p, c)."""
        return torch.zeros(self.A.shape[1], self.Y.shape[1], dtype=torch.float64)

    def loss(self, W: torch.Tensor) -> float:
        return (float((self.R @ W - self.QtY).square().sum()) + self.offset) / self.n

    def grad(self, W: torch.Tensor) -> torch.Tensor:
        """``2 A^T (A W - Y) / n``: one gradient evaluation."""
        return self.R.T @ (self.R @ W - self.QtY) * (2.0 / self.n)

    def hess(self, V: torch.Tensor) -> torch.Tensor:
        """``2 A^T A V / n`` (the Hessian is the same for every column of ``W``)."""
        return self.R.T @ (self.R @ V) * (2.0 / self.n)

    def excess(self, W: torch.Tensor) -> float:
        """``(L(W) - L*) / (L(0) - L*)``, clamped at 0 (1 at the start)."""
        gap = self.loss0 - self.loss_star
        return max((self.loss(W) - self.loss_star) / gap, 0.0) if gap > 0 else 0.0

    def test_metric(self, W: torch.Tensor) -> float | None:
        """Test accuracy (classification) or test MSE (regression); None without a test set."""
        if self.A_test is None or self.y_test is None:
            return None
        pred = self.A_test @ W
        if self.classification:
            return float((pred.argmax(dim=1) == self.y_test).double().mean())
        return float((pred[:, 0] - self.y_test).square().mean())


def make_problem(
    Z_train: torch.Tensor,
    y_train: torch.Tensor,
    Z_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    *,
    view: View = "released",
    classification: bool = False,
) -> ProbeProblem:
    """The attacker's :class:`ProbeProblem` on features ``Z`` (module doc), float64.

    Args:
        Z_train: (n, d) features; y_train: (n,) regression targets, or class labels of
            any integer type when ``classification`` (sorted distinct labels -> 0..C-1).
        Z_test, y_test: optional held-out rows, for the test metric.
        view: ``"released"``, ``"standardized"`` or ``"whitened"``.

    Raises:
        ValueError: bad shapes, NaN/Inf features or targets, a class in ``y_test`` not in
            ``y_train``, fewer than two classes, an unknown view.
    """
    _check_features("Z_train", Z_train)
    n = Z_train.shape[0]
    if not isinstance(y_train, torch.Tensor) or y_train.shape != (n,):
        raise ValueError(f"y_train must have shape ({n},) like Z_train's rows")
    if (Z_test is None) != (y_test is None):
        raise ValueError("give both Z_test and y_test, or neither")
    if Z_test is not None and y_test is not None:
        _check_features("Z_test", Z_test, Z_train.shape[1])
        if y_test.shape != (Z_test.shape[0],):
            raise ValueError(f"y_test must have shape ({Z_test.shape[0]},) like Z_test's rows")
    Z = Z_train.detach().double()
    mean, M = _view_maps(Z, view)
    A = _apply(Z, mean, M, classification)
    A_test = None if Z_test is None else _apply(Z_test.detach().double(), mean, M, classification)
    if classification:
        classes = torch.unique(y_train)
        if classes.numel() < 2:
            raise ValueError(f"y_train has a single class {classes.tolist()}: nothing to learn")
        ids = torch.searchsorted(classes, y_train)
        Y = torch.nn.functional.one_hot(ids, classes.numel()).double()
        test = None
        if y_test is not None:
            test = torch.searchsorted(classes, y_test).clamp(max=classes.numel() - 1)
            if not bool((classes[test] == y_test).all()):
                raise ValueError("y_test has labels not seen in y_train")
    else:
        Y = y_train.detach().double()[:, None]
        test = None if y_test is None else y_test.detach().double()
        if not bool(torch.isfinite(Y).all()) or (
            test is not None and not torch.isfinite(test).all()
        ):
            raise ValueError("y_train or y_test contains NaN or Inf")
    W_star = torch.linalg.lstsq(A, Y, driver="gelsd").solution
    lipschitz = float(torch.linalg.eigvalsh(A.T @ A)[-1]) * 2.0 / n
    R, QtY, offset = A, Y, 0.0
    if n > A.shape[1]:
        Q, R = torch.linalg.qr(A, mode="reduced")
        QtY = Q.T @ Y
        offset = float((Y - Q @ QtY).square().sum())
    # L* and L(0) through the same arithmetic as every later L(W), so the excess is 0 at W*
    loss_star = (float((R @ W_star - QtY).square().sum()) + offset) / n
    loss0 = (float(QtY.square().sum()) + offset) / n
    return ProbeProblem(
        A, Y, A_test, test, classification, W_star, loss_star, loss0, lipschitz, R, QtY, offset
    )
