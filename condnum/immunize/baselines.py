"""Baselines of the paper's Table 1 that are not Algorithm 1.

- "Opt kappa": optimise the condition numbers directly, minimising
  ``L(omega, theta) + log kappa(theta^T K_P theta) - log kappa(theta^T K_H theta)`` over
  ``(theta, omega, intercept)`` with full-batch Adam; ``log kappa`` is differentiated
  through the extreme eigenvalues (``d lambda = u^T dS u``).
- "R_ill only" is Algorithm 1 without ``R_well``: ``immunize_linear(..., lam_p=0)``.

IMMA (bi-level optimisation) is not provided: the released code carries only fragments of
it, so no faithful reproduction is possible.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from condnum.immunize.algorithm1 import Init, initial_head
from condnum.immunize.control import StepControl
from condnum.immunize.problem import LinearProblem, initial_theta
from condnum.immunize.result import LinearImmunization
from condnum.immunize.spectral import Implementation, Spectral

__all__ = ["opt_kappa"]


def opt_kappa(
    X_P: torch.Tensor,
    X_H: torch.Tensor,
    y_P: torch.Tensor | None = None,
    *,
    steps: int = 300,
    lr: float = 1e-2,
    init: Init = "identity",
    d: int | None = None,
    rtol: float | None = None,
    seed: int = 0,
    backend: Implementation = "condnum",
    progress: bool = False,
) -> LinearImmunization:
    """The "Opt kappa" baseline (module doc). The head starts as the plain least-squares fit.

    A step with a non-finite objective is undone and ``lr`` halved (logged, warned).
    """
    if steps < 0 or not lr > 0:
        raise ValueError(f"need steps >= 0 and lr > 0, got {steps}, {lr}")
    prob = LinearProblem.from_data(X_P, X_H, y_P)
    spec = Spectral(backend, rtol)
    theta = initial_theta(init, prob, d=d, seed=seed).requires_grad_(True)
    params = [theta]
    if prob.y_P is not None:
        head = initial_head(prob.X_P, prob.y_P, theta.detach())
        omega, intercept = (t.clone().requires_grad_(True) for t in head)
        params += [omega, intercept]
    opt = torch.optim.Adam(params, lr=lr)
    ctrl = StepControl.for_lr(lr)
    hist: dict[str, list[float]] = {"kappa_P": [], "kappa_H": [], "loss": []}
    for t in tqdm(range(steps), disable=not progress, desc="immunize (Opt kappa)"):
        saved = [p.detach().clone() for p in params]
        log_kp = spec.log_kappa(spec.covariance(theta, prob.K_P))
        log_kh = spec.log_kappa(spec.covariance(theta, prob.K_H))
        loss = log_kp - log_kh
        if prob.y_P is not None:
            loss = loss + (prob.X_P @ theta @ omega + intercept - prob.y_P).square().mean()
        opt.zero_grad()
        loss.backward()
        if not (
            math.isfinite(float(loss.detach()))
            and all(bool(torch.isfinite(p.grad).all()) for p in params)
        ):
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)
            if not ctrl.reject_optimizer_step(opt, t, "non-finite objective or gradient"):
                break
            continue
        opt.step()
        ctrl.accept()
        hist["kappa_P"].append(math.exp(float(log_kp.detach())))
        hist["kappa_H"].append(math.exp(float(log_kh.detach())))
        hist["loss"].append(float(loss.detach()))
    ctrl.finish("condnum.opt_kappa")
    settings = dict(
        method="opt_kappa", steps=steps, lr=lr, init=init if isinstance(init, str) else "tensor",
        rtol=spec.rtol, seed=seed, backend=backend,
    )  # fmt: skip
    head = (omega.detach(), intercept.detach()) if prob.y_P is not None else (None, None)
    return LinearImmunization(theta.detach(), None, *head, hist, ctrl.events, settings)
