"""The attackers of the suite: optimisers of the probe's quadratic :class:`ProbeProblem`.

Each attacker is a small object with a ``name`` and ``run(problem, trace)``: it starts
at ``W_0 = 0`` and reports every iterate to ``trace`` with the number of gradient
evaluations spent so far, until ``trace`` says stop (tolerance reached, or the budget
spent). A gradient evaluation is one ``A^T (A V)`` product pair: ``problem.grad`` or
``problem.hess`` (the exact line search and conjugate gradient need one per step, as
gradient descent does). Quantities an attacker may know for free, as the paper's analysis
does, are not counted: the Lipschitz constant ``L = lambda_max`` of the Hessian for the
fixed steps.

Learning-rate-sensitive attackers (Adam, RMSprop, heavy ball) come with a small grid
(:data:`GRIDS`); the suite reports the best member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from condnum.attack.problem import ProbeProblem

__all__ = [
    "GRIDS",
    "LBFGS",
    "RMSprop",
    "Adam",
    "Attacker",
    "ClosedForm",
    "ConjugateGradient",
    "GradientDescent",
    "HeavyBall",
    "LineSearchGD",
    "Nesterov",
    "Trace",
    "default_attackers",
]


class Trace:
    """Excess loss ``(L(W) - L*) / (L(0) - L*)`` of each reported iterate, per evaluation.

    ``trace(W, evals)`` records an iterate and returns True when the attacker should stop:
    the budget is spent, or the excess loss is at most ``tol`` and at least ``epochs``
    evaluations have been made (so the test metric after ``epochs`` is known).
    ``at_epochs`` is the test metric of the last iterate reached within ``epochs``
    evaluations; ``last`` the last iterate reported (attackers pass a fresh tensor).
    """

    def __init__(self, problem: ProbeProblem, *, budget: int, tol: float, epochs: int = 0):
        if budget < 1 or not 0 < tol < 1 or epochs < 0:
            raise ValueError(f"need budget >= 1, 0 < tol < 1, epochs >= 0; got {budget}, {tol}, "
                             f"{epochs}")  # fmt: skip
        self.problem, self.budget, self.tol, self.epochs = problem, budget, tol, epochs
        self.evals: list[int] = [0]
        self.excess: list[float] = [problem.excess(problem.zeros())]
        self._W_at_epochs = self.last = problem.zeros()

    def __call__(self, W: torch.Tensor, evals: int) -> bool:
        e = self.problem.excess(W)
        if not math.isfinite(e):
            e = math.inf
        self.evals.append(evals)
        self.excess.append(e)
        self.last = W
        if evals <= self.epochs or self.epochs == 0:
            self._W_at_epochs = W.clone()
        return (
            evals >= self.budget or not math.isfinite(e) or (e <= self.tol and evals >= self.epochs)
        )

    @property
    def at_epochs(self) -> float | None:
        """Test metric of the last iterate within ``epochs`` evaluations (the last one when
        ``epochs`` is 0); None without test rows."""
        return self.problem.test_metric(self._W_at_epochs)

    @property
    def evals_to_tol(self) -> int | None:
        """First evaluation count whose iterate has excess loss ``<= tol``; None if never."""
        for n, e in zip(self.evals, self.excess, strict=True):
            if e <= self.tol:
                return n
        return None


class Attacker:
    """Base: ``name``, ``label`` (name with its hyper-parameter), ``run(problem, trace)``."""

    name: ClassVar[str] = ""

    @property
    def label(self) -> str:
        return self.name

    def run(self, problem: ProbeProblem, trace: Trace) -> None:
        raise NotImplementedError

    def max_evals(self, rank: int) -> int | None:
        """Evaluations this attacker needs at most, in exact arithmetic, on a design of rank
        ``rank`` whatever its spectrum (:mod:`condnum.attack.bounds`); None: no bound known."""
        _check_rank(rank)
        return None


def _check_rank(rank: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be an int >= 0, got {rank!r}")


class LineSearchGD(Attacker):
    """Steepest descent with exact line search (the paper's attacker)::

    G = grad L(W),  alpha = <G, G> / <G, H G>,  W <- W - alpha G
    """

    name = "GD, exact line search"

    def run(self, problem: ProbeProblem, trace: Trace) -> None:
        W, evals = problem.zeros(), 0
        while True:
            G = problem.grad(W)
            HG = problem.hess(G)
            evals += 1
            curvature = float((G * HG).sum())
            if curvature <= 0:  # G = 0: W is a minimiser
                trace(W, evals)
                return
            W = W - (float((G * G).sum()) / curvature) * G
            if trace(W, evals):
                return


class GradientDescent(Attacker):
    """Gradient descent with the fixed step ``1/L``: ``W <- W - grad L(W) / L``."""

    name = "GD, step 1/L"

    def run(self, problem: ProbeProblem, trace: Trace) -> None:
        W, evals = problem.zeros(), 0
        while True:
            W = W - problem.grad(W) / problem.lipschitz
            evals += 1
            if trace(W, evals):
                return


@dataclass
class HeavyBall(Attacker):
    """Polyak's heavy ball: ``W_{t+1} = W_t - grad L(W_t) / L + beta (W_t - W_{t-1})``."""

    beta: float = 0.9
    name = "heavy ball, step 1/L"

    @property
    def label(self) -> str:
        return f"{self.name}, β={self.beta:g}"

    def run(self, problem: ProbeProblem, trace: Trace) -> None:
        W = prev = problem.zeros()
        evals = 0
        while True:
            W, prev = W - problem.grad(W) / problem.lipschitz + self.beta * (W - prev), W
            evals += 1
            if trace(W, evals):
                return


class Nesterov(Attacker):
    """Nesterov's accelerated gradient for convex functions, step ``1/L``::

    V = W_t + (t - 1)/(t + 2) (W_t - W_{t-1}),   W_{t+1} = V - grad L(V) / L
    """

    name = "Nesterov, step 1/L"

    def run(self, problem: ProbeProblem, trace: Trace) -> None:
        W = prev = problem.zeros()
        t = 0
        while True:
            t += 1
            V = W + ((t - 1) / (t + 2)) * (W - prev)
            W, prev = V - problem.grad(V) / problem.lipschitz, W
            if trace(W, t):
                return


@dataclass
class Adam(Attacker):
    """Adam (Kingma & Ba; ``torch.optim.Adam``'s defaults ``beta1 = 0.9``, ``beta2 = 0.999``,
    ``eps = 1e-8``), a diagonal, adaptive preconditioner::

        m <- beta1 m + (1 - beta1) G,   v <- beta2 v + (1 - beta2) G^2
        W <- W - lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    """

    lr: float = 1e-2
    name = "Adam"
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    @property
    def label(self) -> str:
        return f"{self.name}, lr={self.lr:g}"

    def run(self, problem: ProbeProblem, trace: Trace) -> None:
        W = problem.zeros()
        m, v = torch.zeros_like(W), torch.zeros_like(W)
        t = 0
        while True:
            t += 1
            G = problem.grad(W)
            m = self.beta1 * m + (1 - self.beta1) * G
            v = self.beta2 * v + (1 - self.beta2) * G * G
            denom = (v / (1 - self.beta2**t)).sqrt() + self.eps
            W = W - self.lr * (m / (1 - self.beta1**t)) / denom
            if trace(W, t):
                return


@dataclass
class RMSprop(Attacker):
    """RMSprop (``torch.optim.RMSprop``'s defaults ``alpha = 0.99``, ``eps = 1e-8``), a
    diagonal, adaptive preconditioner: ``v <- alpha v + (1 - alpha) G^2``,
    ``W <- W - lr G / (sqrt(v) + eps)``."""

    lr: float = 1e-2
    name = "RMSprop"
    alpha, eps = 0.99, 1e-8

    @property
    def label(self) -> str:
        return f"{self.name}, lr={self.lr:g}"

    def run(self, problem: ProbeProblem, trace: Trace) -> None:
        W = problem.zeros()
        v = torch.zeros_like(W)
        t = 0
        while True:
            t += 1
            G = problem.grad(W)
            v = self.alpha * v + (1 - self.alpha) * G * G
            W = W - self.lr * G / (v.sqrt() + self.eps)
            if trace(W, t):
                return


class _Stop(Exception):
    pass


class LBFGS(Attacker):
    """L-BFGS (``torch.optim.LBFGS``, history 20, strong Wolfe line search).

    Every closure call is a gradient evaluation, line-search trials included, and is
    reported: the attacker knows each trial's loss, so it may keep the best point seen.
    """

    name = "L-BFGS, history 20"

    def run(self, problem: ProbeProblem, trace: Trace) -> None:
        W = problem.zeros().requires_grad_()
        budget = trace.budget
        opt = torch.optim.LBFGS(
            [W], lr=1, max_iter=budget, max_eval=budget + 1, history_size=20,
            tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe",
        )  # fmt: skip
        evals = 0

        def closure() -> torch.Tensor:
            nonlocal evals
            Wd = W.detach()
            W.grad = problem.grad(Wd)
            evals += 1
            if trace(Wd.clone(), evals):
                raise _Stop
            return torch.tensor(problem.loss(Wd), dtype=torch.float64)

        try:
            opt.step(closure)
        except _Stop:
            pass


class ConjugateGradient(Attacker):
    """Linear conjugate gradient on the normal equations ``H W = 2 A^T Y / n``, per column.

    In exact arithmetic it reaches the minimiser in at most ``rank(A)`` steps, and its
    error after ``t`` steps is bounded by ``2 ((sqrt(kappa) - 1)/(sqrt(kappa) + 1))^t``.
    """

    name = "conjugate gradient"

    def run(self, problem: ProbeProblem, trace: Trace) -> None:
        W = problem.zeros()
        R = -problem.grad(W)  # residual b - H W
        P, rr = R.clone(), (R * R).sum(dim=0)
        evals = 1
        while True:
            HP = problem.hess(P)
            evals += 1
            pHp = (P * HP).sum(dim=0)
            alpha = torch.where(pHp > 0, rr / pHp, torch.zeros_like(rr))
            W = W + alpha * P
            R = R - alpha * HP
            rr_new = (R * R).sum(dim=0)
            beta = torch.where(rr > 0, rr_new / rr, torch.zeros_like(rr))
            P, rr = R + beta * P, rr_new
            if trace(W, evals) or not bool((pHp > 0).any()):
                return

    def max_evals(self, rank: int) -> int:
        """``rank + 1``: the starting gradient, then at most ``rank`` steps (finite termination)."""
        _check_rank(rank)
        return rank + 1


class ClosedForm(Attacker):
    """The least-squares solve ``W = A^+ Y`` (``torch.linalg.lstsq``, ``gelsd``).

    One solve, counted as one evaluation: its cost, ``O(n p^2)``, does not depend on the
    conditioning, so no convergence-rate defence slows it.
    """

    name = "closed-form least squares"

    def run(self, problem: ProbeProblem, trace: Trace) -> None:
        trace(torch.linalg.lstsq(problem.A, problem.Y, driver="gelsd").solution, 1)

    def max_evals(self, rank: int) -> int:
        """One solve, whatever the design."""
        _check_rank(rank)
        return 1


#: Learning-rate / momentum grids; the suite reports each attacker's best member.
GRIDS: dict[type[Attacker], tuple[float, ...]] = {
    HeavyBall: (0.5, 0.9, 0.99),
    Adam: (1e-3, 1e-2, 1e-1, 1.0),
    RMSprop: (1e-3, 1e-2, 1e-1, 1.0),
}


def default_attackers() -> list[list[Attacker]]:
    """The suite: one list per attacker, several members for a grid."""
    return [
        [LineSearchGD()],
        [GradientDescent()],
        [HeavyBall(b) for b in GRIDS[HeavyBall]],
        [Nesterov()],
        [Adam(lr) for lr in GRIDS[Adam]],
        [RMSprop(lr) for lr in GRIDS[RMSprop]],
        [LBFGS()],
        [ConjugateGradient()],
        [ClosedForm()],
    ]
