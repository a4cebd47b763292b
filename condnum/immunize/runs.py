"""Immunize-and-measure drivers shared by the command line and the examples.

Each driver immunizes a linear extractor on one task pair, then measures it the paper's
way and the attacker's way:

- ``rir``: (i), (ii), RIR relative to the identity under both kappa rules of
  :func:`condnum.metrics.kappa` (``"paper"``: the authors' ``S + 1e-6 I`` rule, comparable
  with the paper's tables; ``"relative"``: the scale-free numerical-range rule),
  computed on the training rows used, in float64, with ``eigvalsh``;
- ``attacks``: the least-squares linear probe (:func:`condnum.attack.linear_probe_least_squares`)
  on raw and on immunized features of each task: norm-ratio curves and steps to ``tol``;
- ``primary``: the primary task's test loss (regression) or accuracy (classification),
  beside a plain linear fit on the raw inputs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from condnum import attack, datasets, metrics
from condnum.attack import LeastSquaresProbe
from condnum.immunize.algorithm1 import algorithm1, immunize_linear, lstsq_head
from condnum.immunize.authors import immunize_linear_authors
from condnum.immunize.baselines import opt_kappa
from condnum.immunize.harden import harden, orthogonal_mix
from condnum.immunize.result import LinearImmunization, save_extractor
from condnum.immunize.simultaneous import simultaneous_diagonalization
from condnum.immunize.spectral import Implementation
from condnum.metrics import RIRResult

__all__ = [
    "HOUSE_PRICES_METHODS",
    "MNIST_METHODS",
    "check_mnist_method",
    "Attack",
    "Outcome",
    "excess_loss",
    "measure",
    "run_digit_pairs",
    "run_house_prices",
    "run_mnist_pair",
    "write_outcome",
]

#: The attacker's budget and tolerances: on the norm ratio ``||w_t - w*||^2 / ||w_0 - w*||^2``
#: (the paper's Fig. 1) and on the excess loss ``(L(w_t) - L*) / (L(w_0) - L*)`` (the probe
#: has captured 99% of what it can learn).
ATTACK_STEPS, ATTACK_TOL, EXCESS_TOL = 2000, 1e-3, 1e-2

Method = Callable[..., LinearImmunization]
#: The rows of the paper's Table 1 that this library runs, as ``(X_P, X_H, y_P, seed,
#: backend, steps) -> LinearImmunization``.
HOUSE_PRICES_METHODS: dict[str, Method] = {
    "algorithm1 (printed, λ balanced at θ₀)": lambda X_P, X_H, y, seed, backend, steps: (
        algorithm1(X_P, X_H, y, steps=steps, init="random", seed=seed, balance_at_init=0.05,
                   backend=backend)
    ),
    "authors' released code": lambda X_P, X_H, y, seed, backend, steps: (
        immunize_linear_authors(X_P, X_H, y, seed=seed, backend=backend)
    ),
    "R_ill only": lambda X_P, X_H, y, seed, backend, steps: (
        immunize_linear(X_P, X_H, y, steps=steps, init="identity", lam_p=0.0, seed=seed,
                        backend=backend)
    ),
    "Opt κ": lambda X_P, X_H, y, seed, backend, steps: (
        opt_kappa(X_P, X_H, y, steps=steps, seed=seed, backend=backend)
    ),
    "ours: Algorithm 1, balanced (θ₀ = I)": lambda X_P, X_H, y, seed, backend, steps: (
        immunize_linear(X_P, X_H, y, steps=steps, init="identity", seed=seed, backend=backend)
    ),
    "ours: whitening θ₀ + balanced Algorithm 1": lambda X_P, X_H, y, seed, backend, steps: (
        immunize_linear(X_P, X_H, y, steps=steps, init="whiten", seed=seed, backend=backend)
    ),
    "hardened: the above + orthogonal mix": lambda X_P, X_H, y, seed, backend, steps: (
        orthogonal_mix(immunize_linear(X_P, X_H, y, steps=steps, init="whiten", seed=seed,
                                       backend=backend), seed=seed)
    ),
    "simultaneous diagonalization + orthogonal mix": lambda X_P, X_H, y, seed, backend, steps: (
        simultaneous_diagonalization(X_P, X_H, y, seed=seed)
    ),
}  # fmt: skip

#: The House Prices default: the closed-form extractor of
#: :mod:`condnum.immunize.simultaneous`, rotated by ``orthogonal_mix``. On the authors' data
#: it keeps the plain fit's primary test loss with (ii) <= 1 and gives the largest kappa
#: ratio of any extractor, and it slows L-BFGS >= 10x on released and standardized features,
#: which Algorithm 1 + mix (2-9x) does not. The Algorithm 1 methods stay available by name.
DEFAULT_METHOD = "simultaneous diagonalization + orthogonal mix"


@dataclass
class Outcome:
    """One immunized extractor on one task pair, measured (module doc)."""

    name: str
    result: LinearImmunization
    rir: dict[str, RIRResult]
    primary: dict[str, float]
    attacks: dict[str, Attack] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain numbers: ``i``, ``ii``, ``rir`` (paper rule) and all of both rules."""
        paper = self.rir["paper"]
        out: dict[str, Any] = {"name": self.name, "i": paper.i, "ii": paper.ii, "rir": paper.rir}
        out["rules"] = {rule: {k: v for k, v in r.__dict__.items() if v is not None}
                        for rule, r in self.rir.items()}  # fmt: skip
        out["primary"] = self.primary
        out["attack"] = {
            task: {"budget": a.raw.steps, "norm_ratio_tol": ATTACK_TOL,
                   "norm_ratio_steps": [a.raw.steps_to_tol, a.immunized.steps_to_tol],
                   "excess_loss_tol": EXCESS_TOL, "excess_loss_steps": list(a.steps)}
            for task, a in self.attacks.items()
        }  # fmt: skip
        out["seconds"] = self.seconds
        out["settings"] = self.result.settings
        out["events"] = len(self.result.events)
        return out


def measure(
    X_P: torch.Tensor, X_H: torch.Tensor, theta: torch.Tensor, bias: torch.Tensor | None = None
) -> dict[str, RIRResult]:
    """RIR relative to the identity under both rules (float64 ``eigvalsh``)."""
    return {
        rule: metrics.rir(X_P, X_H, theta, bias, rule=rule, backend="eigvalsh")
        for rule in metrics.RULES
    }


def excess_loss(probe: LeastSquaresProbe, Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(L(w_t) - L*) / (L(w_0) - L*)`` of a probe on ``(Z, y)``, ``L* = L(w*)``, clamped at 0."""
    floor = float((Z.double() @ probe.w_star - y.double()).square().mean())
    gap = float(probe.loss[0]) - floor
    if gap <= 0:
        return torch.zeros_like(probe.loss)
    return ((probe.loss - floor) / gap).clamp(min=0.0)


def _first(curve: torch.Tensor, tol: float) -> int | None:
    hits = torch.nonzero(curve <= tol).flatten()
    return int(hits[0]) if hits.numel() else None


@dataclass(frozen=True)
class Attack:
    """The bad actor's least-squares probe on raw and on immunized features of one task.

    ``excess`` holds the :func:`excess_loss` curves (raw, immunized); ``steps`` the first
    step where each falls to :data:`EXCESS_TOL` (None: not within the budget).
    """

    raw: LeastSquaresProbe
    immunized: LeastSquaresProbe
    excess: tuple[torch.Tensor, torch.Tensor]

    @property
    def steps(self) -> tuple[int | None, int | None]:
        return _first(self.excess[0], EXCESS_TOL), _first(self.excess[1], EXCESS_TOL)


def _attack(X: torch.Tensor, y: torch.Tensor, imm: LinearImmunization, steps: int) -> Attack:
    probes = []
    for Z in (X, imm.features(X)):
        probes.append(attack.linear_probe_least_squares(Z, y, steps=steps, tol=ATTACK_TOL))
    excess = tuple(excess_loss(p, Z, y) for p, Z in zip(probes, (X, imm.features(X)), strict=True))
    return Attack(probes[0], probes[1], excess)  # type: ignore[arg-type]


def _timed(fn: Callable[[], LinearImmunization]) -> tuple[LinearImmunization, float]:
    t0 = time.perf_counter()
    res = fn()
    return res, time.perf_counter() - t0


def run_house_prices(
    pair: datasets.TaskPair,
    method: str = DEFAULT_METHOD,
    *,
    seed: int = 0,
    steps: int = 300,
    backend: Implementation = "condnum",
    attack_steps: int = ATTACK_STEPS,
) -> Outcome:
    """Immunize on the House Prices training rows (from ``datasets.load_house_prices``).

    ``primary``: ``test_loss`` (MSE of the immunized model on the primary test rows) and
    ``plain_test_loss`` (the affine least-squares fit on raw inputs), and their ratio.
    """
    if method not in HOUSE_PRICES_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(HOUSE_PRICES_METHODS)}")
    P, H = pair.primary, pair.harmful
    res, secs = _timed(
        lambda: HOUSE_PRICES_METHODS[method](P.X_train, H.X_train, P.y_train, seed, backend, steps)
    )
    beta, c = lstsq_head(P.X_train, P.y_train)
    plain = float((P.X_test @ beta + c - P.y_test).square().mean())
    test = float((res.predict(P.X_test) - P.y_test).square().mean())
    primary = {"test_loss": test, "plain_test_loss": plain, "test_loss_ratio": test / plain}
    attacks = {
        "primary": _attack(P.X_train, P.y_train, res, attack_steps),
        "harmful": _attack(H.X_train, H.y_train, res, attack_steps),
    }
    rir = measure(P.X_train, H.X_train, res.theta, res.bias)
    return Outcome(f"house_prices/{method}/seed{seed}", res, rir, primary, attacks, secs)


def _one_vs_rest_accuracy(
    X: torch.Tensor,
    labels: torch.Tensor,
    digit: int,
    features: Callable[[torch.Tensor], torch.Tensor],
) -> float:
    """Least-squares ``digit``-vs-rest classifier on ``features(X)``: fit even rows, test odd.

    Solved by the normal equations with a ridge of ``1e-10 * trace / d`` (a near-exact fit,
    orders of magnitude faster than an SVD at MNIST's size).
    """
    y = (labels == digit).double() * 2 - 1
    Z = features(X)
    A = torch.cat([Z, torch.ones(Z.shape[0], 1, dtype=Z.dtype)], dim=1)
    G = A[0::2].T @ A[0::2]
    G.diagonal().add_(1e-10 * float(G.diagonal().sum()) / G.shape[0])
    w = torch.linalg.solve(G, A[0::2].T @ y[0::2])
    return float(((A[1::2] @ w > 0) == (y[1::2] > 0)).double().mean())


#: Immunizers of :func:`run_mnist_pair`: the whitening start + balanced Algorithm 1
#: (default), or the closed-form :func:`simultaneous_diagonalization` (always mixed).
MNIST_METHODS = ("algorithm1", "simultaneous-diagonalization")


def check_mnist_method(method: str, hardening: str) -> None:
    """Raise ``ValueError`` unless ``method`` is one of :data:`MNIST_METHODS` and takes
    ``hardening`` (simultaneous diagonalization always mixes)."""
    if method not in MNIST_METHODS:
        raise ValueError(f"method must be one of {MNIST_METHODS}, got {method!r}")
    if method == "simultaneous-diagonalization" and hardening != "orthogonal-mix":
        raise ValueError(
            f"hardening {hardening!r}: simultaneous-diagonalization always applies the "
            "orthogonal mix; hardening='none' is for method='algorithm1'"
        )


def run_mnist_pair(
    images: torch.Tensor,
    labels: torch.Tensor,
    p: int,
    h: int,
    *,
    method: str = MNIST_METHODS[0],
    init: str = "whiten",
    whiten_rtol: float = 1e-6,
    steps: int = 10,
    backend: Implementation = "condnum",
    hardening: str = "orthogonal-mix",
    seed: int = 0,
) -> Outcome:
    """Ordered pair ``(p, h)``: ``X_P`` every image of digit ``p``, ``X_H`` of digit ``h``.

    ``method`` (:data:`MNIST_METHODS`): ``"algorithm1"`` runs ``steps`` balanced Algorithm 1
    steps from ``init``; raw pixels are far more ill-conditioned than House Prices (kappa
    ~1e11), so the default start whitens down to ``whiten_rtol * lambda_max``.
    ``"simultaneous-diagonalization"`` is closed form (``init``, ``whiten_rtol``, ``steps``
    and ``backend`` are not used) and includes the orthogonal mix seeded by ``seed``, so it
    takes only ``hardening="orthogonal-mix"``. ``primary``: accuracy of a least-squares
    ``p``-vs-rest classifier (the other eight
    digits; ``h`` left out) on immunized features and on raw pixels, fitted on even rows
    and tested on odd rows. ``hardening`` (:func:`condnum.immunize.harden.harden`, seeded by
    ``seed``): ``"orthogonal-mix"`` (default) keeps the kappas, RIR and accuracy and defeats
    the attacker's per-feature standardization; ``"none"`` is the immunizer's extractor.
    """
    check_mnist_method(method, hardening)
    X_P, X_H = datasets.digit_pair_sets(images, labels, p, h)
    if method == "simultaneous-diagonalization":
        res, secs = _timed(lambda: simultaneous_diagonalization(X_P, X_H, seed=seed))
    else:
        res, secs = _timed(
            lambda: harden(
                immunize_linear(
                    X_P, X_H, steps=steps, init=init, whiten_rtol=whiten_rtol, backend=backend
                ),
                hardening,
                seed,
            )
        )
    keep = labels != h
    X, lab = images[keep].double(), labels[keep]
    primary = {
        "accuracy": _one_vs_rest_accuracy(X, lab, p, res.features),
        "plain_accuracy": _one_vs_rest_accuracy(X, lab, p, lambda Z: Z),
    }
    return Outcome(f"mnist/{p}:{h}", res, measure(X_P, X_H, res.theta), primary, {}, secs)


def run_digit_pairs(
    images: torch.Tensor,
    labels: torch.Tensor,
    primary_pair: tuple[int, int],
    harmful_pair: tuple[int, int],
    *,
    init: str = "whiten",
    steps: int = 300,
    backend: Implementation = "condnum",
    attack_steps: int = ATTACK_STEPS,
    seed: int = 0,
    hardening: str = "orthogonal-mix",
) -> Outcome:
    """Keep ``a``-vs-``b`` easy, make ``c``-vs-``d`` hard (two binary digit tasks, +-1 targets).

    ``primary``: test accuracy of the immunized model and of the plain least-squares fit.
    ``hardening`` as in :func:`run_mnist_pair`.
    """
    P = datasets.digit_pair_task(images, labels, *primary_pair, seed=seed)
    H = datasets.digit_pair_task(images, labels, *harmful_pair, seed=seed)
    y_P, y_H = P.y_train.double() * 2 - 1, H.y_train.double() * 2 - 1
    res, secs = _timed(
        lambda: harden(
            immunize_linear(P.X_train, H.X_train, y_P, steps=steps, backend=backend),
            hardening,
            seed,
        )
    )
    beta, c = lstsq_head(P.X_train, y_P)
    primary = {
        "accuracy": float(((res.predict(P.X_test) > 0).long() == P.y_test).double().mean()),
        "plain_accuracy": float(((P.X_test @ beta + c > 0).long() == P.y_test).double().mean()),
    }
    attacks = {
        "primary": _attack(P.X_train, y_P, res, attack_steps),
        "harmful": _attack(H.X_train, y_H, res, attack_steps),
    }
    name = f"digits/{primary_pair[0]}v{primary_pair[1]}->{harmful_pair[0]}v{harmful_pair[1]}"
    return Outcome(name, res, measure(P.X_train, H.X_train, res.theta), primary, attacks, secs)


def write_outcome(
    out_dir: str | Path, outcome: Outcome, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``extractor.pt`` (``theta``, ``bias`` if affine) and ``results.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_extractor(out_dir / "extractor.pt", outcome.result.theta, outcome.result.bias)
    payload = {**outcome.to_json(), **(extra or {})}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    return out_dir
