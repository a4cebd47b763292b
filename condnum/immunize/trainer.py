"""Immunizing any ``nn.Module`` feature extractor with any torch optimizer.

The paper's objective for a deep extractor ``f_theta`` (no ``K^-1``; the regularizers act
on the feature Gram of each batch)::

    loss = task_loss + lam_P * R_well(Z_P^T Z_P) + lam_H * R_ill(Z_H^T Z_H),
    Z_P = f_theta(x_P),  Z_H = f_theta(x_H)

:class:`ImmunizationLoss` adds the two terms (through :class:`condnum.RWell` /
:class:`condnum.RIll`, so the published lambdas carry over) and, with ``balance="auto"``,
rescales them every step so that each regularizer's gradient with respect to its features
has the norm of the task loss's gradient times ``lam`` (the paper balanced gradient norms
once, by hand; ``||dR_ill/dZ||`` scales like ``1/||Z||^5`` and moves by orders of
magnitude during training). :func:`train_immunized` is the loop: a step whose loss or
gradients are not finite is skipped, the parameters are restored from before the last
step and every learning rate is halved; the user is warned once at the end.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

import condnum
from condnum.immunize.control import StepControl, StepEvent

__all__ = ["ImmunizationLoss", "TrainResult", "train_immunized"]


def _grad_norm(value: torch.Tensor, wrt: torch.Tensor) -> float:
    """``||d value / d wrt||_F`` without touching ``.grad`` (0 when unrelated)."""
    if not value.requires_grad:
        return 0.0
    (g,) = torch.autograd.grad(value, wrt, retain_graph=True, allow_unused=True)
    return 0.0 if g is None else float(g.detach().norm())


class ImmunizationLoss(nn.Module):
    """``task_loss + lam_p * R_well(Z_P^T Z_P) + lam_h * R_ill(Z_H^T Z_H)``.

    Args:
        lam_p, lam_h: weights. With ``balance="fixed"`` they multiply the regularizers
            as in the paper; with ``"auto"`` the effective weight of each term is
            ``lam * ||grad_Z task|| / ||grad_Z R||`` (smoothed by an exponential moving
            average with factor ``momentum``), i.e. ``lam`` is the ratio of gradient norms.
        k, rtol, kappa_target: passed to :class:`condnum.RWell` / :class:`condnum.RIll`
            (``R_ill`` stops pushing once ``kappa(Z_H^T Z_H)`` reaches ``kappa_target``).
        balance: ``"auto"`` or ``"fixed"``.
        normalize: apply both regularizers to the trace-normalised Grams ``m S / tr S``
            (scale-free: their value and gradient do not depend on the scale of the
            features, so balancing does not chase ``||grad R_ill|| ~ 1/||Z||^5``, and
            ``R_ill`` cannot reward growing features). Default: ``True`` with
            ``balance="auto"``, ``False`` (the paper's scale, which the published lambdas
            assume) with ``"fixed"``.

    ``forward(task_loss, Z_P, Z_H)`` takes features of shape (N, ...) (flattened to
    (N, d)) that require grad, returns the scalar total, and keeps the parts of the last
    call in ``self.last`` (floats: ``task``, ``r_well``, ``r_ill``, ``lam_p``, ``lam_h``, and
    ``kappa_h``, the harmful Gram's kappa as ``R_ill`` saw it). While ``R_ill`` does not push
    (target reached) its balancing weight is held, not decayed.
    """

    def __init__(
        self,
        lam_p: float = 1.0,
        lam_h: float = 1.0,
        *,
        k: int | None = None,
        rtol: float | None = None,
        kappa_target: float | None = None,
        balance: Literal["auto", "fixed"] = "auto",
        normalize: bool | None = None,
        momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if lam_p < 0 or lam_h < 0:
            raise ValueError(f"lam_p and lam_h must be >= 0, got {lam_p}, {lam_h}")
        if balance not in ("auto", "fixed"):
            raise ValueError(f"balance must be 'auto' or 'fixed', got {balance!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.lam_p, self.lam_h, self.balance, self.momentum = lam_p, lam_h, balance, momentum
        normalize = balance == "auto" if normalize is None else normalize
        self.r_well = condnum.RWell(k, normalize=normalize)
        self.r_ill = condnum.RIll(k, rtol, kappa_target=kappa_target, normalize=normalize)
        self.register_buffer("scale", torch.zeros(2, dtype=torch.float64))  # EMA of the ratios
        self.last: dict[str, float] = {}

    def forward(
        self, task_loss: torch.Tensor, Z_P: torch.Tensor, Z_H: torch.Tensor
    ) -> torch.Tensor:
        for name, Z in (("Z_P", Z_P), ("Z_H", Z_H)):
            if Z.ndim < 2 or Z.shape[0] == 0:
                raise ValueError(f"{name} must be (N, ...) features, got shape {tuple(Z.shape)}")
        if task_loss.ndim != 0:
            raise ValueError(f"task_loss must be a scalar, got shape {tuple(task_loss.shape)}")
        Z_P, Z_H = Z_P.flatten(1), Z_H.flatten(1)
        if Z_P.shape[1] != Z_H.shape[1]:
            raise ValueError(f"Z_P has {Z_P.shape[1]} features, Z_H {Z_H.shape[1]}")
        r_w = self.r_well(Z_P) if self.lam_p > 0 else Z_P.new_zeros(())
        r_i = self.r_ill(Z_H) if self.lam_h > 0 else Z_H.new_zeros(())
        lam_p, lam_h = self.lam_p, self.lam_h
        if self.balance == "auto":
            ratios = self._ratios(task_loss, r_w, r_i, Z_P, Z_H)
            lam_p, lam_h = lam_p * float(ratios[0]), lam_h * float(ratios[1])
        self.last = dict(
            task=float(task_loss.detach()), r_well=float(r_w.detach()), r_ill=float(r_i.detach()),
            lam_p=lam_p, lam_h=lam_h, kappa_h=float(self.r_ill.last.get("kappa", math.nan)),
        )  # fmt: skip
        return task_loss + lam_p * r_w + lam_h * r_i

    @torch.no_grad()
    def _ratios(self, task, r_w, r_i, Z_P, Z_H) -> torch.Tensor:
        """``||grad task|| / ||grad R||`` per regularizer, EMA-smoothed (0 when undefined)."""
        with torch.enable_grad():
            g_task = _grad_norm(task, Z_P) or 1.0  # no task on Z_P: balance to unit norm
            g = (_grad_norm(r_w, Z_P), _grad_norm(r_i, Z_H))
        new = torch.tensor([g_task / x if x > 0 else 0.0 for x in g], dtype=torch.float64)
        fresh, idle = self.scale == 0, new == 0  # idle: the term does not push this step
        ema = self.momentum * self.scale + (1 - self.momentum) * new
        self.scale.copy_(torch.where(fresh, new, torch.where(idle, self.scale, ema)))
        return self.scale


@dataclass
class TrainResult:
    """Per-step ``history`` (the keys of ``ImmunizationLoss.last`` plus ``loss``) and ``events``."""

    history: dict[str, list[float]] = field(default_factory=dict)
    events: list[StepEvent] = field(default_factory=list)


def _overflows(Z: torch.Tensor) -> bool:
    """True when ``||Z||_F^4`` (a bound on ``||Z^T Z||_F^2``, which R_ill needs) is not finite."""
    return not bool(torch.isfinite(Z.detach().double().square().sum().square()))


def _inputs(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def train_immunized(
    extractor: nn.Module,
    head: nn.Module,
    primary: Iterable[tuple[torch.Tensor, torch.Tensor]],
    harmful: Iterable[Any],
    *,
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loss: ImmunizationLoss | None = None,
    epochs: int = 1,
    progress: bool = True,
) -> TrainResult:
    """Train ``head(extractor(x_P))`` on the primary task while immunizing ``extractor``.

    Each step takes a primary batch ``(x_P, y_P)`` and the next harmful batch (``x_H`` or
    ``(x_H, ...)``; the harmful loader is cycled, its labels unused), computes
    ``loss(task_loss(head(Z_P), y_P), Z_P, Z_H)`` and steps ``optimizer``. A non-finite
    loss or gradient skips the step, restores the parameters saved before the previous
    step and halves every learning rate (logged in ``events``; one
    :class:`~condnum.immunize.control.ImmunizationWarning` at the end).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    loss = ImmunizationLoss() if loss is None else loss
    params = [p for m in (extractor, head) for p in m.parameters() if p.requires_grad]
    lr0 = max(g["lr"] for g in optimizer.param_groups)
    ctrl = StepControl(1.0, 1.0, min_step=1e-10, grow=1.0, max_retries=40)  # multiplier on every lr
    base_lr = [g["lr"] for g in optimizer.param_groups]
    saved = [p.detach().clone() for p in params]
    result = TrainResult({"loss": []})
    step = 0
    for epoch in range(epochs):
        bar = tqdm(primary, disable=not progress, desc=f"immunize epoch {epoch + 1}/{epochs}")
        for (x_p, y_p), h_batch in zip(bar, itertools.cycle(harmful)):
            Z_P, Z_H = extractor(x_p), extractor(_inputs(h_batch))
            task = task_loss(head(Z_P), y_p)
            try:
                total = loss(task, Z_P, Z_H)
            except (ValueError, FloatingPointError):
                if not (_overflows(Z_P) or _overflows(Z_H)):
                    raise
                total = torch.tensor(float("nan"))  # the Gram overflowed: an overshoot
            optimizer.zero_grad()
            ok = bool(torch.isfinite(total))
            if ok:
                total.backward()
                ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
            if not ok:
                ctrl.reject(step, "non-finite loss or gradient", severe=True)
                with torch.no_grad():
                    for p, s in zip(params, saved, strict=True):
                        p.copy_(s)
                for g, lr in zip(optimizer.param_groups, base_lr, strict=True):
                    g["lr"] = lr * ctrl.step
                if ctrl.stalled:
                    break
                continue
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    s.copy_(p)
            optimizer.step()
            ctrl.accept()
            step += 1
            result.history["loss"].append(float(total.detach()))
            for key, val in loss.last.items():
                result.history.setdefault(key, []).append(val)
            bar.set_postfix(loss=f"{float(total.detach()):.4g}", lr=f"{lr0 * ctrl.step:.2g}")
        if ctrl.stalled:
            break
    ctrl.finish("condnum.train_immunized")
    result.events = ctrl.events
    return result
