"""Algorithm 1 of Zheng et al. (ICML 2025) for a linear extractor ``theta`` (D_in, d).

The paper's update, full batch, primary data ``(X_P, y_P)``, harmful inputs ``X_H``,
``K = X^T X``, least-squares task ``L(omega, theta) = ||X_P theta omega + c - y_P||^2 / N``::

    omega <- omega - eta grad_omega L
    theta <- theta - eta grad_theta L - eta lam_P K_P^-1 grad_theta R_well(theta^T K_P theta)
                                      - eta lam_H K_H^-1 grad_theta R_ill(theta^T K_H theta)

Since ``grad_theta R(theta^T K theta) = 2 K theta G`` with ``G = dR/dS``, the
preconditioned terms are ``2 theta G``: each regulariser step right-multiplies ``theta``
by ``I - 2 eta lam G``, which acts multiplicatively on the eigenvalues of ``S`` (the
basis of the paper's monotonicity results).

Two implementations:

- :func:`algorithm1`: the update as printed, fixed ``eta``, ``lam_P``, ``lam_H``, with a
  ridge ``(K + rho I)^-1`` for the singular ``K`` of real data
  (``rho = ridge * trace(K) / D_in``). Only non-finite values and objective blow-ups are
  caught (step halved, user warned).
- :func:`immunize_linear` (recommended): the same multiplicative regulariser steps,
  ``theta <- c * theta (I - M)``, made scale-free and safe, from a better start:

  * a whitening start (default): ``theta_0 = (K_P + rho I)^(-1/2)``, the closed-form
    minimiser of ``R_well`` for the primary's directions above the ridge ``rho``. The
    printed algorithm reaches it one top eigenvalue per step (``R_well``'s gradient
    only sees ``sigma_max``): hundreds of steps on 79 features, thousands on 784 pixels.

  * balancing: ``M = s (w_P G_P / ||G_P||_F + w_H G_H / ||G_H||_F)`` with
    ``w = lam / (lam_P + lam_H)``. Normalising by the gradient norm is the paper's
    "balance the gradient norms" done every step; it matters because
    ``||dR_ill/dS|| ~ 1/||S||^3`` while ``||dR_well/dS|| ~ ||S||``, so no fixed pair of
    lambdas works across data scales. The effective ``eta lam`` of each term is recorded.
  * a kappa target: ``R_ill`` is switched off while ``kappa(H_H) >= kappa_target``
    (default ``0.01 / rtol``): pushing ``sigma_min`` further would only drop it below the
    numerical range, where kappa is no longer measurable (it collapses instead of growing).
  * a scale gauge: kappa is invariant to ``theta -> c theta``; ``c`` keeps
    ``||theta^T K_P theta||_F = ||K_P||_F`` so the regulariser steps cannot inflate both
    Hessians (the ``R_ill`` step alone multiplies every eigenvalue by ``1 + O(s)``).
  * backtracking: a step that gives non-finite values or raises the merit
    ``w_P log kappa_P - w_H log min(kappa_H, target)`` is rejected and ``s`` halved
    (:class:`~condnum.immunize.control.StepControl`); rejections are logged in
    ``events``, a non-finite candidate also warns.
  * head transport: the primary head ``(omega, c0)`` starts as the plain least-squares
    fit and follows each step exactly (``omega <- (I - M)^-1 omega / c``), so the primary
    model ``X theta omega`` is unchanged by immunization.

  The closed form ``2 theta G`` is used instead of ``(K + rho I)^-1 2 K theta G``: the two
  differ only on rows of ``theta`` in the null space of ``K``, which do not enter
  ``theta^T K theta``, and dropping the ridge keeps every step an exact
  right-multiplication (which the head transport needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from tqdm.auto import tqdm

from condnum.immunize.control import StepControl
from condnum.immunize.problem import LinearProblem, initial_theta
from condnum.immunize.result import LinearImmunization
from condnum.immunize.spectral import Implementation, Spectral

__all__ = ["algorithm1", "immunize_linear", "initial_head", "lstsq_head"]

Init = Literal["identity", "random", "whiten"] | torch.Tensor
#: Largest rise of the merit accepted in one step (log units): the two regularisers pull
#: in different directions, so the merit is not strictly monotone at finite steps.
MERIT_SLACK = 2e-3
#: The printed algorithm rejects a step that multiplies its objective by more than this.
BLOWUP = 2.0


def lstsq_head(Z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-norm least-squares ``(omega, intercept)`` of ``y ~ Z omega + intercept``."""
    A = torch.cat([Z, torch.ones(Z.shape[0], 1, dtype=Z.dtype)], dim=1)
    sol = torch.linalg.lstsq(A, y[:, None], driver="gelsd").solution[:, 0]
    return sol[:-1], sol[-1]


def initial_head(
    X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain linear fit ``y ~ X beta + c`` expressed on the features ``X theta``.

    For an invertible square ``theta``, ``omega = theta^-1 beta`` makes the primary model
    exactly the plain least-squares fit; otherwise the least-squares head on ``X theta``.
    """
    beta, c = lstsq_head(X, y)
    if theta.shape[0] == theta.shape[1]:
        try:
            omega = torch.linalg.solve(theta, beta)
        except RuntimeError:  # singular theta
            omega = None
        if omega is not None and bool(torch.isfinite(omega).all()):
            return omega, c
    return lstsq_head(X @ theta, y)


def _check_common(steps: int, lam_p: float, lam_h: float) -> None:
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if lam_p < 0 or lam_h < 0 or lam_p + lam_h == 0:
        raise ValueError(f"need lam_p, lam_h >= 0, not both 0; got {lam_p}, {lam_h}")


def immunize_linear(
    X_P: torch.Tensor,
    X_H: torch.Tensor,
    y_P: torch.Tensor | None = None,
    *,
    steps: int = 300,
    init: Init = "whiten",
    d: int | None = None,
    lam_p: float = 1.0,
    lam_h: float = 1.0,
    step_size: float = 0.2,
    max_step: float = 0.4,
    kappa_target: float | None = None,
    rtol: float | None = None,
    gauge: bool = True,
    whiten_rtol: float = 1e-2,
    seed: int = 0,
    backend: Implementation = "condnum",
    progress: bool = False,
) -> LinearImmunization:
    """Immunize a linear extractor with balanced, safeguarded Algorithm 1 steps (module doc).

    Args:
        X_P: primary inputs (N_P, D_in); X_H: harmful inputs (N_H, D_in); any float dtype,
            computed in float64.
        y_P: primary regression targets (N_P,), optional; when given the head starts as
            the plain least-squares fit on ``X_P`` (:func:`initial_head`) and is
            transported through every step.
        steps: iterations (each: one gradient of R_well and of R_ill, one candidate step
            with backtracking).
        init: ``"whiten"`` (default: ridge whitening ``(K_P + rho I)^(-1/2)``,
            ``rho = whiten_rtol * lambda_max(K_P)``: the primary's directions above ``rho``
            start flat, as ``R_well`` wants them, see
            :func:`~condnum.immunize.problem.whitening`), ``"identity"`` (the paper's
            start), ``"random"`` (seeded ``nn.Linear`` init) or a (D_in, d) tensor; ``d``
            for ``"random"``.
        whiten_rtol: the ridge of ``"whiten"``. 1e-2 whitens only the primary's dominant
            directions and leaves ``R_ill`` room to work; smaller values whiten further
            (higher RIR, but the harmful task's weak directions, shared with the
            primary's, get amplified too: its kappa can drop).
        lam_p, lam_h: relative weights of R_well and R_ill after gradient-norm balancing
            (1:1 is the paper's balance; ``lam_p=0`` gives the "R_ill only" ablation).
        step_size, max_step: initial and largest relative step ``s``.
        kappa_target: R_ill is active while ``kappa(H_H) <`` this (default ``0.01/rtol``).
        rtol: numerical range of kappa and sigma_min (default
            :data:`condnum.defaults.KAPPA_RTOL`).
        gauge: keep ``||theta^T K_P theta||_F = ||K_P||_F``.
        backend: ``"condnum"`` (compiled ops) or ``"reference"`` (eigvalsh + autograd).

    Returns:
        :class:`~condnum.immunize.result.LinearImmunization` (linear: ``bias`` is None).

    Cost per iteration: three (D_in, d) x (d, d) GEMMs, two covariances and four extreme
    eigen-solves of (d, d) matrices.
    """
    _check_common(steps, lam_p, lam_h)
    if not 0 < step_size <= max_step:
        raise ValueError(f"need 0 < step_size <= max_step, got {step_size}, {max_step}")
    prob = LinearProblem.from_data(X_P, X_H, y_P)
    spec = Spectral(backend, rtol)
    target = 0.01 / spec.rtol if kappa_target is None else kappa_target
    if not target > 1:
        raise ValueError(f"kappa_target must be > 1, got {target}")
    merit = _Merit(lam_p / (lam_p + lam_h), lam_h / (lam_p + lam_h), target)
    gauged = _Gauge(spec, prob, gauge)

    cur = gauged(initial_theta(init, prob, d=d, seed=seed, whiten_rtol=whiten_rtol))
    k_p, k_h = spec.kappa(cur.S_P, "P"), spec.kappa(cur.S_H, "H")
    omega = intercept = None
    if prob.y_P is not None:
        omega, intercept = initial_head(prob.X_P, prob.y_P, cur.theta)
    eye = torch.eye(cur.theta.shape[1], dtype=torch.float64)
    ctrl = StepControl(step_size, max_step)
    hist: dict[str, list[float]] = {
        "kappa_P": [k_p], "kappa_H": [k_h], "step": [0.0], "lam_p": [0.0], "lam_h": [0.0]
    }  # fmt: skip
    bar = tqdm(range(steps), disable=not progress, desc="immunize (Algorithm 1, balanced)")
    for t in bar:
        direction, lam_eff = _balanced_direction(spec, cur, merit, ill_on=merit.ill_on(k_h))
        if not bool(direction.any()):
            break  # R_well at its minimum (kappa_P = 1) and R_ill switched off
        found = _backtrack(spec, ctrl, gauged, merit, cur, eye, direction, merit(k_p, k_h), t)
        if found is None:
            break
        s = ctrl.step
        ctrl.accept()
        M, cur, k_p, k_h = found
        if omega is not None:
            omega = torch.linalg.solve(M, omega) / cur.c  # head transport
        for key, val in (("kappa_P", k_p), ("kappa_H", k_h), ("step", s)):
            hist[key].append(val)
        for key in ("lam_p", "lam_h"):
            hist[key].append(s * lam_eff[key])
        bar.set_postfix(kappa_P=f"{k_p:.3g}", kappa_H=f"{k_h:.3g}")
    ctrl.finish("condnum.immunize_linear")
    settings = dict(
        method="balanced", steps=steps, init=init if isinstance(init, str) else "tensor",
        lam_p=lam_p, lam_h=lam_h, step_size=step_size, max_step=max_step,
        kappa_target=target, rtol=spec.rtol, gauge=gauge, whiten_rtol=whiten_rtol, seed=seed,
        backend=backend, iterations=len(hist["step"]) - 1, stopped=_stop_reason(ctrl, hist, steps),
    )  # fmt: skip
    return LinearImmunization(cur.theta, None, omega, intercept, hist, ctrl.events, settings)


class _Point(NamedTuple):
    """``theta`` after the scale gauge, its two Hessians and the gauge factor ``c``."""

    theta: torch.Tensor
    S_P: torch.Tensor
    S_H: torch.Tensor
    c: float


class _Gauge:
    """Scale gauge: ``theta -> c theta`` with ``||theta^T K_P theta||_F = ||K_P||_F``
    (``c = 1`` when off), so the regulariser steps cannot inflate both Hessians."""

    def __init__(self, spec: Spectral, prob: LinearProblem, on: bool) -> None:
        self.spec, self.prob, self.on = spec, prob, on
        self.fro_ref = float(prob.K_P.norm())

    def __call__(self, theta: torch.Tensor) -> _Point:
        S_P = self.spec.covariance(theta, self.prob.K_P)
        c2 = self.fro_ref / float(S_P.norm()) if self.on else 1.0
        theta, S_P = theta * math.sqrt(c2), S_P * c2
        return _Point(theta, S_P, self.spec.covariance(theta, self.prob.K_H), math.sqrt(c2))


@dataclass(frozen=True)
class _Merit:
    """``w_P log kappa_P - w_H log min(kappa_H, target)``, and the kappa target: R_ill is
    on while ``kappa_H < target``."""

    w_p: float
    w_h: float
    target: float

    def __call__(self, k_p: float, k_h: float) -> float:
        return self.w_p * math.log(k_p) - self.w_h * math.log(min(k_h, self.target))

    def ill_on(self, k_h: float) -> bool:
        return self.w_h > 0 and k_h < self.target


def _balanced_direction(
    spec: Spectral, cur: _Point, merit: _Merit, *, ill_on: bool
) -> tuple[torch.Tensor, dict[str, float]]:
    """Balancing: ``w_P G_P / ||G_P||_F + w_H G_H / ||G_H||_F`` (the R_ill term only while
    ``ill_on``), and each term's effective ``eta lam`` per unit step."""
    direction = torch.zeros_like(cur.S_P)
    lam_eff = {"lam_p": 0.0, "lam_h": 0.0}
    for on, w, grad, S, key in (
        (merit.w_p > 0, merit.w_p, spec.grad_well, cur.S_P, "lam_p"),
        (ill_on, merit.w_h, spec.grad_ill, cur.S_H, "lam_h"),
    ):
        if on:
            G = grad(S)[1]
            norm = float(G.norm())
            if norm > 0:
                direction += (w / norm) * G
                lam_eff[key] = w / (2 * norm)  # times s: the printed eta * lambda
    return direction, lam_eff


def _backtrack(
    spec: Spectral,
    ctrl: StepControl,
    gauged: _Gauge,
    merit: _Merit,
    cur: _Point,
    eye: torch.Tensor,
    direction: torch.Tensor,
    m0: float,
    t: int,
) -> tuple[torch.Tensor, _Point, float, float] | None:
    """Backtracking: the first step ``M = I - s direction`` whose result is finite and whose
    merit rises at most MERIT_SLACK above ``m0``, halving ``s`` on each rejection;
    ``(M, point, kappa_P, kappa_H)``, or None once the control stalled."""
    while True:
        M = eye - ctrl.step * direction
        cand = gauged(cur.theta @ M)
        severe = not all(bool(torch.isfinite(x).all()) for x in cand[:3])
        if severe:
            reason = "non-finite theta or Hessians"
        else:
            k_p, k_h = spec.kappa(cand.S_P, "P"), spec.kappa(cand.S_H, "H")
            if math.isfinite(merit(k_p, k_h)) and merit(k_p, k_h) <= m0 + MERIT_SLACK:
                return M, cand, k_p, k_h
            reason = f"kappa moved the wrong way (kappa_P {k_p:.3g}, kappa_H {k_h:.3g})"
        if not ctrl.reject(t, reason, severe=severe):
            return None


def _stop_reason(ctrl: StepControl, hist: dict[str, list[float]], steps: int) -> str:
    if ctrl.stalled:
        return "converged: no step along the regularizers' directions improved the merit"
    if len(hist["step"]) - 1 < steps:
        return "converged: kappa_P = 1 and R_ill switched off (kappa_H >= kappa_target)"
    return "step budget reached"


class _PrintedState(NamedTuple):
    """The printed algorithm at one point: its objective ``L + lam_P R_well + lam_H R_ill``,
    the descent direction for ``theta``, the head's gradients (None without targets), the
    two Hessians and the two preconditioned regulariser gradients."""

    objective: float
    step: torch.Tensor
    grad_omega: torch.Tensor | None
    grad_intercept: torch.Tensor | None
    S_P: torch.Tensor
    S_H: torch.Tensor
    pre_well: torch.Tensor
    pre_ill: torch.Tensor


def algorithm1(
    X_P: torch.Tensor,
    X_H: torch.Tensor,
    y_P: torch.Tensor | None = None,
    *,
    steps: int = 1000,
    lr: float = 1e-3,
    lam_p: float = 1.0,
    lam_h: float = 1.0,
    ridge: float = 1e-6,
    init: Init = "identity",
    d: int | None = None,
    rtol: float | None = None,
    balance_at_init: float | None = None,
    seed: int = 0,
    backend: Implementation = "condnum",
    progress: bool = False,
) -> LinearImmunization:
    """Algorithm 1 as printed (module doc): fixed ``lr`` (eta) and lambdas, ridge preconditioner.

    ``balance_at_init=s`` chooses the lambdas the paper's way, once: at ``theta_0``,
    ``lam_H = lam_P ||K_P^-1 grad R_well|| / ||K_H^-1 grad R_ill||`` (equal preconditioned
    gradient norms) and ``lr`` so that the first step changes ``theta`` by ``s`` relative
    (``lr`` and ``lam_h`` arguments are then ignored); they stay fixed afterwards.

    ``omega`` and the intercept start at zero and follow plain gradient descent on the
    task loss (when ``y_P`` is given). The preconditioner is ``(K + rho I)^-1`` with
    ``rho = ridge * trace(K) / D_in``, applied by Cholesky. A step whose objective
    ``L + lam_P R_well + lam_H R_ill`` is non-finite or more than doubles is rejected and
    ``lr`` halved (one :class:`~condnum.immunize.control.ImmunizationWarning` at the end).
    """
    _check_common(steps, lam_p, lam_h)
    if not lr > 0 or not ridge > 0:
        raise ValueError(f"need lr > 0 and ridge > 0, got {lr}, {ridge}")
    prob = LinearProblem.from_data(X_P, X_H, y_P)
    spec = Spectral(backend, rtol)
    D = prob.d_in
    chol = {
        name: torch.linalg.cholesky(K + ridge * float(K.trace()) / D * torch.eye(D, dtype=K.dtype))
        for name, K in (("P", prob.K_P), ("H", prob.K_H))
    }
    theta = initial_theta(init, prob, d=d, seed=seed)
    omega = torch.zeros(theta.shape[1], dtype=torch.float64)
    intercept = torch.zeros((), dtype=torch.float64)
    y = prob.y_P

    lam = {"p": lam_p, "h": lam_h}

    def state(theta, omega, intercept):
        """Objective, step direction and task gradients at a point; None if not finite."""
        S_P, S_H = spec.covariance(theta, prob.K_P), spec.covariance(theta, prob.K_H)
        try:
            (r_w, G_P), (r_i, G_H) = spec.grad_well(S_P), spec.grad_ill(S_H)
        except (FloatingPointError, ValueError, RuntimeError):
            return None
        pre_w = torch.cholesky_solve(2 * prob.K_P @ theta @ G_P, chol["P"])
        pre_i = torch.cholesky_solve(2 * prob.K_H @ theta @ G_H, chol["H"])
        step = lam["p"] * pre_w + lam["h"] * pre_i
        obj, g_omega, g_c = lam["p"] * r_w + lam["h"] * r_i, None, None
        if y is not None:
            Z = prob.X_P @ theta
            res = Z @ omega + intercept - y
            obj += float(res.square().mean())
            step = step + 2 * prob.X_P.T @ torch.outer(res, omega) / len(y)
            g_omega, g_c = 2 * Z.T @ res / len(y), 2 * res.mean()
        ok = math.isfinite(obj) and bool(torch.isfinite(step).all())
        return _PrintedState(obj, step, g_omega, g_c, S_P, S_H, pre_w, pre_i) if ok else None

    cur = state(theta, omega, intercept)
    if cur is None:
        raise FloatingPointError("Algorithm 1: the objective is not finite at theta_0")
    if balance_at_init is not None:
        n_w, n_i = float(cur.pre_well.norm()), float(cur.pre_ill.norm())
        lam["h"] = lam_p * n_w / n_i if lam_p > 0 else 1.0
        lr = balance_at_init * float(theta.norm()) / (max(lam_p, 1.0) * n_w + lam["h"] * n_i)
        cur = state(theta, omega, intercept)
    ctrl = StepControl.for_lr(lr)
    hist: dict[str, list[float]] = {
        "kappa_P": [spec.kappa(cur.S_P, "P")], "kappa_H": [spec.kappa(cur.S_H, "H")],
        "loss": [cur.objective], "step": [0.0],
    }  # fmt: skip
    for t in tqdm(range(steps), disable=not progress, desc="immunize (Algorithm 1, printed)"):
        while True:
            eta = ctrl.step
            new = (theta - eta * cur.step, omega, intercept)
            if y is not None:
                new = (new[0], omega - eta * cur.grad_omega, intercept - eta * cur.grad_intercept)
            nxt = state(*new)
            if nxt is not None and nxt.objective <= BLOWUP * abs(cur.objective) + 1e-12:
                break
            reason = (
                "non-finite objective"
                if nxt is None
                else f"objective blew up to {nxt.objective:.3g}"
            )
            if not ctrl.reject(t, reason, severe=True):
                break
        if ctrl.stalled:
            break
        ctrl.accept()
        (theta, omega, intercept), cur = new, nxt
        hist["kappa_P"].append(spec.kappa(cur.S_P, "P"))
        hist["kappa_H"].append(spec.kappa(cur.S_H, "H"))
        hist["loss"].append(cur.objective)
        hist["step"].append(eta)
    ctrl.finish("condnum.algorithm1")
    settings = dict(
        method="algorithm1", steps=steps, lr=lr, lam_p=lam_p, lam_h=lam["h"], ridge=ridge,
        balance_at_init=balance_at_init,
        init=init if isinstance(init, str) else "tensor", rtol=spec.rtol, seed=seed,
        backend=backend, iterations=len(hist["step"]) - 1, stopped=_stop_reason(ctrl, hist, steps),
    )  # fmt: skip
    has_head = y is not None
    return LinearImmunization(
        theta, None, omega if has_head else None, intercept if has_head else None, hist,
        ctrl.events, settings,
    )  # fmt: skip
