"""Step-size control shared by the immunization loops: reject overshooting steps, tell the user.

Every loop proposes a step of relative size ``step``; a step whose result is non-finite,
moves the condition numbers the wrong way or blows up the task loss is rejected and
``step`` is halved (and retried); an accepted step lets ``step`` grow back by ``grow`` up
to ``max_step``. Each rejection is kept as a :class:`StepEvent`. At the end of a run
:meth:`StepControl.finish` issues one :class:`ImmunizationWarning` when a step overshot
(non-finite values, loss blow-up) or the run stalled, so no run ends in NaN and none
fails silently; routine backtracking is only logged.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

__all__ = ["ImmunizationWarning", "StepControl", "StepEvent"]


class ImmunizationWarning(UserWarning):
    """Steps were rejected (overshoot, NaN) or the run stalled; see the result's ``events``."""


@dataclass(frozen=True)
class StepEvent:
    """One rejected step: iteration ``step``, what went wrong, the step size before halving."""

    iteration: int
    reason: str
    step_size: float
    severe: bool = False


@dataclass
class StepControl:
    """Backtracking on a relative step size.

    Attributes:
        step: the current step size (relative change per iteration).
        max_step: upper bound for ``step`` when it grows back after accepted steps.
        min_step: below this the run is declared stalled (:attr:`stalled`).
        grow: factor applied to ``step`` after an accepted step.
        max_retries: consecutive rejections after which the run is declared stalled: no
            step along the current direction helps, which at the end of a run means it
            has converged.
    """

    step: float
    max_step: float
    min_step: float = 1e-8
    grow: float = 1.2
    max_retries: int = 20
    events: list[StepEvent] = field(default_factory=list)
    stalled: bool = False
    _streak: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.min_step <= self.step <= self.max_step):
            raise ValueError(
                f"need 0 < min_step <= step <= max_step, got {self.min_step}, {self.step}, "
                f"{self.max_step}"
            )

    @classmethod
    def for_lr(cls, lr: float) -> StepControl:
        """Control of a fixed learning rate: halved on each rejection, never grown back."""
        return cls(lr, lr, min_step=lr * 1e-12, grow=1.0, max_retries=40)

    def accept(self) -> None:
        self.step = min(self.step * self.grow, self.max_step)
        self._streak = 0

    def reject(self, iteration: int, reason: str, *, severe: bool = False) -> bool:
        """Record the rejection and halve ``step``; False once ``step`` fell below ``min_step``.

        ``severe`` marks an overshoot (non-finite values, loss blow-up) as opposed to
        routine backtracking (the merit rose a little).
        """
        self.events.append(StepEvent(iteration, reason, self.step, severe))
        self.step /= 2
        self._streak += 1
        if self.step < self.min_step or self._streak >= self.max_retries:
            self.stalled = True
        return not self.stalled

    def reject_optimizer_step(
        self, opt: torch.optim.Optimizer, iteration: int, reason: str
    ) -> bool:
        """Reject an overshooting optimizer step: record it, halve ``step`` and set every
        parameter group's ``lr`` to it. False once the run stalled."""
        self.reject(iteration, reason, severe=True)
        for group in opt.param_groups:
            group["lr"] = self.step
        return not self.stalled

    def finish(self, what: str) -> None:
        """Warn once if a step overshot (routine backtracking and convergence are only logged)."""
        severe = [e for e in self.events if e.severe]
        if not severe:
            return
        first = severe[0]
        msg = (
            f"{what}: {len(severe)} overshooting step(s) rejected and the step size halved "
            f"(first at iteration {first.iteration}: {first.reason})"
        )
        if self.stalled:
            msg += "; the run stopped early"
        warnings.warn(msg + ". See the result's `events`.", ImmunizationWarning, stacklevel=3)
