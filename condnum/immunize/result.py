"""What an immunization run returns, and the extractor file format.

``extractor.pt`` is a dict of plain tensors: ``theta`` (D_in, d) and, for an affine
extractor, ``bias`` (d,); features are ``X @ theta + bias`` on the preprocessed inputs.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from condnum.immunize.control import StepEvent

__all__ = ["LinearImmunization", "load_extractor", "save_extractor"]


@dataclass
class LinearImmunization:
    """An immunized linear (affine) extractor and its primary head.

    Attributes:
        theta: (D_in, d) float64.
        bias: (d,) for an affine extractor, else None.
        omega: (d,) primary head, or None when no primary targets were given.
        intercept: the head's scalar intercept (0-dim tensor), or None.
        history: per accepted iteration: ``kappa_P``, ``kappa_H`` (numerical-range rule
            of the run), ``step`` and, where defined, ``loss`` and the effective
            ``lam_p``/``lam_h`` (per unit learning rate).
        events: rejected steps (see :class:`condnum.immunize.StepControl`).
        settings: the arguments of the run (JSON-serialisable).
    """

    theta: torch.Tensor
    bias: torch.Tensor | None = None
    omega: torch.Tensor | None = None
    intercept: torch.Tensor | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    events: list[StepEvent] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def features(self, X: torch.Tensor) -> torch.Tensor:
        """``Z = X theta + bias`` (N, d), float64."""
        Z = X.double() @ self.theta
        return Z if self.bias is None else Z + self.bias

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """The primary model ``Z omega + intercept`` (N,)."""
        if self.omega is None or self.intercept is None:
            raise ValueError("this run had no primary targets, so it has no head")
        return self.features(X) @ self.omega + self.intercept

    def extractor_state(self) -> dict[str, torch.Tensor]:
        """``{"theta": ..., "bias": ...}`` (bias only for an affine extractor)."""
        state = {"theta": self.theta.detach().clone()}
        if self.bias is not None:
            state["bias"] = self.bias.detach().clone()
        return state


def save_extractor(path: str | Path, theta: torch.Tensor, bias: torch.Tensor | None = None) -> Path:
    """Write ``{"theta": (D_in, d), "bias": (d,)}`` with ``torch.save``; returns the path."""
    if theta.ndim != 2:
        raise ValueError(f"theta must be (D_in, d), got shape {tuple(theta.shape)}")
    state = {"theta": theta.detach().cpu().clone()}
    if bias is not None:
        if bias.shape != (theta.shape[1],):
            raise ValueError(f"bias must be ({theta.shape[1]},), got shape {tuple(bias.shape)}")
        state["bias"] = bias.detach().cpu().clone()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def load_extractor(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(theta, bias)`` from :func:`save_extractor`'s file (bias None when absent).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a readable extractor file, or ``theta``/``bias`` of the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"extractor: expected {path}, which does not exist")
    try:
        state = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path} is not an extractor file (torch.load failed)") from err
    if not isinstance(state, dict) or not isinstance(state.get("theta"), torch.Tensor):
        raise ValueError(f"{path} is not an extractor file (a dict with 'theta')")
    theta, bias = state["theta"], state.get("bias")
    if theta.ndim != 2 or (bias is not None and bias.shape != (theta.shape[1],)):
        shapes = (tuple(theta.shape), None if bias is None else tuple(bias.shape))
        raise ValueError(f"{path}: theta must be (D_in, d) and bias (d,), got {shapes}")
    return theta, bias
