"""Measuring immunization: condition numbers and the relative immunization ratio (RIR).

``kappa(S) = sigma_max(S) / sigma_min(S)`` for a symmetric PSD ``S``, in float64, with
``sigma_min`` taken over a *numerical range*. Two rules:

- ``"relative"`` (default): eigenvalues above ``rtol * lambda_max``, ``rtol`` defaulting
  to :data:`KAPPA_RTOL` ``= 1e-12``. Scale-invariant (``kappa(cS) = kappa(S)``) and
  blind to directions that are null up to rounding: a float64 Gram puts those at
  1e-17..1e-15 ``lambda_max`` on the data here (bounded by ``N * eps``). It reports kappa
  up to ``1 / rtol``; a value near that means the threshold cut a real spectrum (raw
  MNIST pixels reach 9e11 under 1e-12 but are cut to a few 1e9 under 1e-10).
- ``"paper"``: the authors' code, ``eigvalsh(S + 1e-6 I)``, ``sigma_max`` its largest
  eigenvalue and ``sigma_min`` its smallest *above* 1e-6. An absolute rule: a null
  direction whose jittered eigenvalue rounds above 1e-6 counts with ``sigma_min``
  ~ 1e-6, so for rank-deficient ``S`` the result is about ``lambda_max / 1e-6``
  (House Prices ``X_P^T X_P``: 1.8e9, against 7.8e3 under the relative rule) and
  depends on the scale of ``S``. Use it to compare with the paper's tables.

Relative immunization ratio (the paper's RIR), with ``H(theta) = Z^T Z`` the Hessian of the
bad actor's least-squares probe on features ``Z = f_theta(X)``::

    RIR = [kappa(H_H(theta_I)) / kappa(H_H(ref))] / [kappa(H_P(theta_I)) / kappa(H_P(ref))]
              (i): harmful got harder          (ii): primary got harder (<= 1 ideal)

``ref`` is the identity (raw inputs) for a linear extractor (:func:`rir`) and the initial
model ``theta_0`` for deep nets (:func:`rir_deep`, :func:`rir_features`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypedDict

import torch

from condnum import reference
from condnum.defaults import KAPPA_RTOL, PAPER_JITTER
from condnum.functional import condition_number

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "NEAR_CEILING",
    "RULES",
    "GroupOptions",
    "RIRResult",
    "format_report",
    "gram",
    "hessian",
    "kappa",
    "kappa_features",
    "measurable_ceiling",
    "near_ceiling",
    "rir",
    "rir_deep",
    "rir_features",
]

Rule = Literal["relative", "paper"]
#: Which solver computes a relative-rule kappa: float64 ``torch.linalg.eigvalsh``, or the
#: library's Lanczos kernels (``"condnum"``, also ``"auto"``).
KappaSolver = Literal["auto", "eigvalsh", "condnum"]
#: Both rules, in the order reports print them.
RULES: tuple[Rule, ...] = ("paper", "relative")
#: A relative-rule kappa within this factor of its ceiling ``1 / rtol`` is flagged.
NEAR_CEILING = 1e-2


def measurable_ceiling(rtol: float | None = None) -> float:
    """``1 / rtol``: the largest kappa the ``"relative"`` rule can report (default rtol
    :data:`KAPPA_RTOL`, ceiling 1e12). A value near it may be a cut spectrum, not a kappa."""
    return 1.0 / (KAPPA_RTOL if rtol is None else rtol)


def near_ceiling(k: float, rtol: float | None = None) -> bool:
    """Whether a relative-rule kappa is at least ``NEAR_CEILING`` times its ceiling."""
    return k >= NEAR_CEILING * measurable_ceiling(rtol)


def hessian(Z: torch.Tensor) -> torch.Tensor:
    """``H = Z^T Z`` (d, d) in float64: the Hessian of ``1/2 ||Z w - y||^2``.

    When N < d its nonzero spectrum is that of the N x N ``Z Z^T`` (:func:`gram`).
    """
    _check_matrix("Z", Z)
    Z = Z.detach().double()
    return Z.T @ Z


def gram(Z: torch.Tensor) -> torch.Tensor:
    """The smaller of ``Z^T Z`` and ``Z Z^T`` in float64 (same nonzero eigenvalues)."""
    _check_matrix("Z", Z)
    Z = Z.detach().double()
    return Z.T @ Z if Z.shape[0] >= Z.shape[1] else Z @ Z.T


def _check_matrix(name: str, A: torch.Tensor) -> None:
    if A.ndim != 2 or A.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 2-D matrix, got shape {tuple(A.shape)}")
    if not A.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {A.dtype}")
    if not bool(torch.isfinite(A).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def _check_symmetric(S: torch.Tensor) -> torch.Tensor:
    """Validate ``S`` and return it in float64, symmetrised.

    Asymmetry up to ``sqrt(eps) * max|S|``, ``eps`` that of float32 or of a lower
    precision ``S.dtype``, is rounding in a computed Gram and allowed.
    """
    _check_matrix("S", S)
    if S.shape[0] != S.shape[1]:
        raise ValueError(f"S must be square, got shape {tuple(S.shape)}")
    tol = math.sqrt(max(torch.finfo(S.dtype).eps, torch.finfo(torch.float32).eps))
    S = S.detach().double()
    if float((S - S.T).abs().max()) > tol * float(S.abs().max()):
        raise ValueError(f"S must be symmetric (max |S - S^T| > {tol:.1e} max |S|)")
    return (S + S.T) / 2


def kappa(
    S: torch.Tensor,
    rule: Rule = "relative",
    *,
    rtol: float | None = None,
    backend: KappaSolver = "auto",
) -> float:
    """``kappa(S) = sigma_max / sigma_min`` of a symmetric PSD matrix, in float64.

    Args:
        S: (d, d) symmetric PSD (negative rounding-level eigenvalues fall below the
            threshold of either rule and are ignored).
        rule: ``"relative"``: ``sigma_min`` = smallest eigenvalue above
            ``rtol * lambda_max``; ``"paper"``: eigenvalues of ``S + 1e-6 I``, smallest
            above 1e-6 (module docstring).
        rtol: for ``"relative"``; default :data:`~condnum.defaults.KAPPA_RTOL` (1e-12, not
            the ops' ``d * eps`` of :func:`condnum.functional.condition_number`).
        backend: for ``"relative"``: ``"eigvalsh"`` (``torch.linalg.eigvalsh``),
            ``"condnum"`` (``condnum.functional.condition_number``, the library's Lanczos
            kernels; also ``"auto"``). ``"paper"`` always uses eigvalsh, as the authors did.

    Raises:
        ValueError: not square/symmetric, NaN/Inf, empty, no positive eigenvalue, unknown
            rule or backend, or ``rtol`` outside (0, 1).
    """
    S = _check_symmetric(S)
    if rule == "paper":
        ev = torch.linalg.eigvalsh(
            S + PAPER_JITTER * torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
        )
        above = ev[ev > PAPER_JITTER]
        if above.numel() == 0:
            raise ValueError("S has no eigenvalue above 0 after the 1e-6 jitter (is S zero?)")
        return float(ev[-1] / above[0])
    if rule != "relative":
        raise ValueError(f"rule must be 'relative' or 'paper', got {rule!r}")
    if backend not in ("auto", "eigvalsh", "condnum"):
        raise ValueError(f"backend must be 'auto', 'eigvalsh' or 'condnum', got {backend!r}")
    rtol = KAPPA_RTOL if rtol is None else rtol
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must be in (0, 1), got {rtol}")
    if S.shape[0] == 1:
        if float(S[0, 0]) <= 0:
            raise ValueError("S has no positive eigenvalue")
        return 1.0
    if backend in ("auto", "condnum"):
        return float(condition_number(S, rtol=rtol))
    return float(reference.condition_number(S, rtol))


def kappa_features(
    Z: torch.Tensor,
    rule: Rule = "relative",
    *,
    rtol: float | None = None,
    backend: KappaSolver = "auto",
) -> float:
    """``kappa(Z^T Z)`` for features ``Z`` (N, d), float64.

    The ``"relative"`` rule works on the smaller Gram (:func:`gram`); the ``"paper"``
    rule on ``Z^T Z`` itself, as the authors' code, since its absolute threshold sees the
    ``d - N`` null directions that ``Z Z^T`` does not have.
    """
    S = hessian(Z) if rule == "paper" else gram(Z)
    return kappa(S, rule, rtol=rtol, backend=backend)


@dataclass(frozen=True)
class RIRResult:
    """(i), (ii) and RIR with the condition numbers behind them.

    For a group average (:func:`rir_deep`), the ``kappa_*`` are means over groups and
    ``i``, ``ii``, ``rir`` are means of the per-group ratios (the authors' aggregation,
    so ``rir`` need not equal ``i / ii``); ``*_std`` are the standard deviations over
    groups (None for a single measurement, ``groups == 0``); ``group_kappas`` holds each
    group's ``(kappa_H_ref, kappa_H_imm, kappa_P_ref, kappa_P_imm)`` (None for a single
    measurement), from which every ratio above can be recomputed.
    """

    kappa_H_ref: float
    kappa_H_imm: float
    kappa_P_ref: float
    kappa_P_imm: float
    i: float
    ii: float
    rir: float
    rule: str
    reference: str
    groups: int = 0
    i_std: float | None = None
    ii_std: float | None = None
    rir_std: float | None = None
    group_kappas: tuple[tuple[float, float, float, float], ...] | None = None
    rtol: float | None = None

    @property
    def near_ceiling(self) -> bool:
        """Relative rule only: whether a kappa sits within :data:`NEAR_CEILING` of the
        measurable ceiling ``1 / rtol``, where it may be the cut-off rather than a kappa."""
        kappas = (self.kappa_H_ref, self.kappa_H_imm, self.kappa_P_ref, self.kappa_P_imm)
        return self.rule == "relative" and any(near_ceiling(k, self.rtol) for k in kappas)

    def __str__(self) -> str:
        return format_report(self)


def _features(X: torch.Tensor, theta: torch.Tensor | None, bias: torch.Tensor | None):
    if theta is None:
        if bias is not None:
            raise ValueError("bias given without theta")
        return X
    if theta.ndim != 2 or theta.shape[0] != X.shape[1]:
        raise ValueError(f"theta must be ({X.shape[1]}, d), got shape {tuple(theta.shape)}")
    Z = X.detach().double() @ theta.detach().double()
    if bias is not None:
        if bias.shape != (theta.shape[1],):
            raise ValueError(f"bias must be ({theta.shape[1]},), got shape {tuple(bias.shape)}")
        Z = Z + bias.detach().double()
    return Z


def rir(
    X_P: torch.Tensor,
    X_H: torch.Tensor,
    theta: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    rule: Rule = "paper",
    rtol: float | None = None,
    backend: KappaSolver = "auto",
) -> RIRResult:
    """RIR of a linear (affine) extractor relative to the identity.

    Features are ``Z = X theta + bias`` (``theta`` (D, d), ``bias`` (d,); None for the
    identity); the Hessians are ``Z^T Z`` of those features, without a column of ones
    (the bad actor's probe has no intercept; the authors' code measures the same), and
    the references ``X_P^T X_P``, ``X_H^T X_H``. ``rule`` defaults to ``"paper"`` so
    numbers compare with the paper's tables; pass ``"relative"`` for the scale-free rule.
    """
    for name, X in (("X_P", X_P), ("X_H", X_H)):
        _check_matrix(name, X)
    if X_P.shape[1] != X_H.shape[1]:
        raise ValueError(f"X_P has {X_P.shape[1]} columns, X_H {X_H.shape[1]}")

    Zs = (X_H, _features(X_H, theta, bias), X_P, _features(X_P, theta, bias))
    kappas = _kappas(Zs, rule, rtol, backend)[None]
    i, ii, ratio = _ratios(kappas)
    return RIRResult(
        *kappas[0].tolist(), float(i), float(ii), float(ratio), rule, "identity", rtol=rtol
    )


def _kappas(
    Zs: tuple[torch.Tensor, ...], rule: Rule, rtol: float | None, backend: KappaSolver
) -> torch.Tensor:
    """``kappa(Z^T Z)`` of the features ``(Z_H_ref, Z_H_imm, Z_P_ref, Z_P_imm)``, float64 (4,)."""
    return torch.tensor(
        [kappa_features(Z, rule, rtol=rtol, backend=backend) for Z in Zs], dtype=torch.float64
    )


def _ratios(kappas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(i, ii, RIR)`` per row of ``kappas`` (n, 4) ordered as in :func:`_kappas`."""
    i = kappas[:, 1] / kappas[:, 0]
    ii = kappas[:, 3] / kappas[:, 2]
    return i, ii, i / ii


class GroupOptions(TypedDict, total=False):
    """Keyword options of the group-averaged RIR (:func:`rir_features`, :func:`rir_deep`).

    ``groups`` (20) groups of ``group_size`` (100) rows of each set, drawn by a
    ``torch.Generator`` seeded with ``seed`` (0); kappa by ``rule`` (``"paper"``), ``rtol``
    and ``backend`` as in :func:`kappa`.
    """

    groups: int
    group_size: int
    seed: int
    rule: Rule
    rtol: float | None
    backend: KappaSolver


def _group_average(
    sample: Callable[[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    n_P: int,
    n_H: int,
    *,
    groups: int = 20,
    group_size: int = 100,
    seed: int = 0,
    rule: Rule = "paper",
    rtol: float | None = None,
    backend: KappaSolver = "auto",
) -> RIRResult:
    """Per group: ``group_size`` rows of each set without replacement, four kappas, ratios."""
    if groups < 1 or group_size < 1:
        raise ValueError(f"need groups >= 1 and group_size >= 1, got {groups}, {group_size}")
    for name, n in (("primary", n_P), ("harmful", n_H)):
        if n < group_size:
            raise ValueError(f"the {name} set has {n} rows, fewer than group_size={group_size}")
    gen = torch.Generator().manual_seed(seed)
    kappas = torch.empty(groups, 4, dtype=torch.float64)  # H_ref, H_imm, P_ref, P_imm
    for g in range(groups):
        idx_P = torch.randperm(n_P, generator=gen)[:group_size]
        idx_H = torch.randperm(n_H, generator=gen)[:group_size]
        H0, H1 = sample("harmful", idx_H)
        P0, P1 = sample("primary", idx_P)
        kappas[g] = _kappas((H0, H1, P0, P1), rule, rtol, backend)
    i, ii, ratio = _ratios(kappas)

    def std(x: torch.Tensor) -> float:
        return float(x.std()) if groups > 1 else 0.0

    m = kappas.mean(dim=0).tolist()
    return RIRResult(
        *m, float(i.mean()), float(ii.mean()), float(ratio.mean()), rule, "theta0", groups,
        std(i), std(ii), std(ratio), tuple(map(tuple, kappas.tolist())), rtol,
    )  # fmt: skip


def rir_features(
    Z_P_ref: torch.Tensor,
    Z_P_imm: torch.Tensor,
    Z_H_ref: torch.Tensor,
    Z_H_imm: torch.Tensor,
    **options: Unpack[GroupOptions],
) -> RIRResult:
    """RIR relative to an initial model from precomputed features, averaged over groups.

    ``Z_*_ref`` are the initial model's features, ``Z_*_imm`` the immunized model's, of
    the same rows (shape (N, ...), flattened to (N, d)). Each of ``groups`` groups draws
    ``group_size`` rows of each set (seeded ``torch.Generator``), computes the four
    ``kappa(Z^T Z)`` and the ratios; the result averages the ratios over groups (the
    paper: 20 groups of 100 samples). ``options``: :class:`GroupOptions`.
    """
    feats = {"primary": (Z_P_ref, Z_P_imm), "harmful": (Z_H_ref, Z_H_imm)}
    for name, (A, B) in feats.items():
        if A.ndim < 2 or A.shape[0] != B.shape[0]:
            raise ValueError(
                f"{name} features must be (N, ...) with the same N for both models, got "
                f"{tuple(A.shape)} and {tuple(B.shape)}"
            )

    def sample(which: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        A, B = feats[which]
        return A[idx].flatten(1), B[idx].flatten(1)

    return _group_average(sample, Z_P_ref.shape[0], Z_H_ref.shape[0], **options)


def rir_deep(
    init: Callable[[torch.Tensor], torch.Tensor],
    immunized: Callable[[torch.Tensor], torch.Tensor],
    X_P: torch.Tensor,
    X_H: torch.Tensor,
    **options: Unpack[GroupOptions],
) -> RIRResult:
    """RIR of a deep extractor relative to its initial model ``theta_0``.

    ``init`` and ``immunized`` map inputs (n, ...) to features (n, ...) (e.g. two
    ``nn.Module`` feature extractors); they are called under ``torch.no_grad`` on each
    group's rows only, so large sets are never pushed through whole. Groups and averaging
    as in :func:`rir_features`. Put modules in ``eval()`` mode first (dropout, batch norm).
    """

    def sample(which: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        X = (X_P if which == "primary" else X_H)[idx]
        with torch.no_grad():
            return init(X).flatten(1), immunized(X).flatten(1)

    return _group_average(sample, X_P.shape[0], X_H.shape[0], **options)


def _fmt(x: float, std: float | None = None) -> str:
    s = f"{x:.4g}" if math.isfinite(x) else str(x)
    return s if std is None else f"{s} ± {std:.2g}"


def format_report(results: RIRResult | Mapping[str, RIRResult], *, title: str = "") -> str:
    """An aligned text table of one or several named :class:`RIRResult`, with a note under
    each relative-rule row whose kappa sits near the rule's measurable ceiling."""
    rows = {"": results} if isinstance(results, RIRResult) else dict(results)
    header = ["", "rule", "ref", "κ_H(ref)", "κ_H(θ)", "(i)↑", "κ_P(ref)", "κ_P(θ)", "(ii)↓",
              "RIR↑"]  # fmt: skip
    table = [header] + [
        [name, r.rule, r.reference, _fmt(r.kappa_H_ref), _fmt(r.kappa_H_imm),
         _fmt(r.i, r.i_std), _fmt(r.kappa_P_ref), _fmt(r.kappa_P_imm), _fmt(r.ii, r.ii_std),
         _fmt(r.rir, r.rir_std)]
        for name, r in rows.items()
    ]  # fmt: skip
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for name, r in rows.items():
        if r.near_ceiling:
            lines.append(
                f"({name or 'this row'}: a κ is within {NEAR_CEILING:g}× of the relative rule's "
                f"measurable ceiling 1/rtol = {measurable_ceiling(r.rtol):.0e}; it may be the "
                "cut-off, not the spectrum)"
            )
    groups = {r.groups for r in rows.values() if r.groups}
    if groups:
        lines.append(f"(κ and ratios averaged over {', '.join(map(str, sorted(groups)))} groups)")
    return "\n".join(([title] if title else []) + lines)
