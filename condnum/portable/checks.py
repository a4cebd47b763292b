"""Input checks and range scaling of the portable ops, with the CPU kernels' messages.

Shape and dtype checks are condnum._ops' (shared with the fake kernels). The value checks
(NaN/Inf, symmetry, warm-start norms) need the values on the host: they are gathered
into one small float64 tensor and copied once per op call.
"""

from __future__ import annotations

import math

import torch

from condnum import _policy
from condnum._ops import check_square, check_vector_for, fail


def symmetrized(
    S: torch.Tensor, op: str, arg: str, vectors: dict[str, torch.Tensor | None] | None = None
) -> tuple[torch.Tensor, float, dict[str, torch.Tensor | None]]:
    """``(W, max|S|, units)``: W = (S + S^T) / 2 in S's dtype, contiguous, after checking
    that S is finite and symmetric to ``SYMMETRY_RTOL``; ``units`` holds each given vector
    divided by its norm, after checking that norm is finite and nonzero.

    One host copy: (min S, max S, max|S - S^T|, the vectors' norms); NaN propagates
    through min and max, so they also tell whether S is finite.
    """
    check_square(S, op, arg)
    vectors = vectors or {}
    for name, v in vectors.items():
        check_vector_for(v, S, op, name)
    Sc = S.contiguous()  # the results do not depend on S's layout
    lo, hi = torch.aminmax(Sc)  # NaN propagates: S is finite iff both ends are
    given = {name: v for name, v in vectors.items() if v is not None}
    stats = [lo.double(), hi.double(), max_asymmetry(Sc).double()]
    stats += [torch.linalg.vector_norm(v.double()) for v in given.values()]
    lo, hi, max_asym, *norms = torch.stack(stats).tolist()
    finite = math.isfinite(lo) and math.isfinite(hi)
    max_abs = max(abs(lo), abs(hi))
    units: dict[str, torch.Tensor | None] = dict.fromkeys(vectors)
    for (name, v), n in zip(given.items(), norms, strict=True):
        if not (math.isfinite(n) and n > 0):
            fail(op, f"{name} must be finite and nonzero, got norm {n:g}")
        units[name] = v / n
    if not finite:
        fail(op, f"{arg} contains NaN or Inf")
    rtol = _policy.SYMMETRY_RTOL[S.dtype]
    if not max_asym <= rtol * max_abs:
        fail(
            op,
            f"{arg} must be symmetric, got max|S - S^T| = {max_asym:g} > {rtol:g} * max|S| = "
            f"{rtol * max_abs:g}",
        )
    W = Sc if max_asym == 0 else ((Sc.double() + Sc.double().mT) * 0.5).to(S.dtype)
    return W, max_abs, units


def max_asymmetry(S: torch.Tensor, panel: int | None = None) -> torch.Tensor:
    """max|S - S^T| as a 0-dim tensor on S's device (NaN if S has one), for a contiguous
    square S. On the CPU it reads the upper triangle by row panels S[i:i+p, i:] against the
    column panels S[i:, i:i+p]^T, p = 128: half of the full difference's work, and each
    transposed read walks p contiguous entries instead of one. Elsewhere one panel, the
    full difference (``panel`` = d): five kernels whatever d, where panels take 3 d / p + 2."""
    d = S.shape[0]
    if panel is None:
        panel = 128 if S.device.type == "cpu" else max(d, 1)
    parts = [
        torch.sub(S[i : i + panel, i:], S[i:, i : i + panel].mT).abs_().amax()
        for i in range(0, d, panel)
    ]
    return torch.stack(parts).amax()


def range_scale(max_abs: float, dtype: torch.dtype) -> float:
    """A power of two p with max|S / p| in [0.5, 1) when max|S| lies outside the range in
    which the solvers' arithmetic on S (squared norms of S v in S's dtype) can neither
    overflow nor underflow; 1 inside it. Dividing by p is exact."""
    if max_abs == 0 or not math.isfinite(max_abs):
        return 1.0
    _, e = math.frexp(max_abs)
    return math.ldexp(1.0, e) if abs(e) > _policy.RANGE_EXPONENT_LIMIT[dtype] else 1.0


def squared_norm(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(scale, sum, finite)`` as float64 0-dim tensors on S's device, with
    ``||S||_F^2 = scale^2 * sum``: S is divided by the power of two ``scale`` of its largest
    entry (in two exact factors, as 2^-e alone overflows for a denormal max|S|), so the sum
    of squares neither overflows nor underflows. No host synchronisation."""
    S64 = S.contiguous().double()
    max_abs = S64.abs().amax()
    finite = torch.isfinite(S64).all()
    _, e = torch.frexp(torch.where(finite & (max_abs > 0), max_abs, 1.0))
    e = e.double()
    lo = torch.floor(e / 2)
    scaled = S64 * torch.exp2(-lo) * torch.exp2(-(e - lo))
    return torch.exp2(e), scaled.square().sum(), finite
