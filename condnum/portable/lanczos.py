"""Lanczos with full reorthogonalisation on torch operations, for any device.

From a start vector v_0, builds an orthonormal Krylov basis V = [v_0 .. v_{m-1}] (rows of
a preallocated (max_steps + 1, d) device tensor) and the tridiagonal T = V^T A V (alpha on
the diagonal, beta off it). Each new direction w = A v_j is orthogonalised against the
whole basis by classical Gram-Schmidt, always twice ("twice is enough": no host decision
in the middle of a step). Ritz pair i (theta_i, y_i = V^T s_i), i = 0 the smallest, comes
from the small T on the host in float64, for just the pairs a check reads, by the CPU
kernel's own routines (condnum.portable.tridiagonal), with the same hints from the previous
check at each end; its residual ||A y_i - theta_i y_i|| = beta_m |s_i[m-1]| bounds the
distance from theta_i to an eigenvalue of A (the CPU kernel's bound), floored at the
rounding of the products A v (_policy.product_floor), below which it keeps falling.

Host synchronisation: one copy of the step's three numbers (alpha_j's two terms, beta_j,
in a (3, max_steps) buffer, copied whole in one transfer) to the host per step, which is
what each step's convergence check reads; nothing else, and on the CPU not even that copy
(the host reads the buffer's memory). Cost per step: one operator application plus 8 m d
flops, in six device operations after the product (two per Gram-Schmidt pass, beta_j,
and the division into the next basis row); a check costs O(m) per Ritz pair it reads, on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from condnum import _policy
from condnum.portable import tridiagonal
from condnum.portable.products import full_fp32


@dataclass
class Ritz:
    index: int  # 0 = the smallest Ritz value
    m: int  # basis size it was computed at
    value: float  # theta_i
    bound: float  # error bound on theta_i: the residual, at least _policy.product_floor
    # (the rounding of the products A v)
    s: torch.Tensor  # (m,) float64 eigenvector of T_m on the host: y_i = V_m^T s


@dataclass
class _End:
    """The last check at one end of T's spectrum (the bottom, or a fixed offset from the
    top): a hint for the next one, as in the CPU kernel."""

    value: float = 0.0
    bound: float = 0.0
    m: int = 0
    from_top: int = -1


class Lanczos:
    """Lanczos on a symmetric operator ``apply: (d,) -> (d,)`` in ``dtype`` on ``device``."""

    def __init__(
        self,
        apply: Callable[[torch.Tensor], torch.Tensor],
        d: int,
        max_steps: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.apply = apply
        self.d = d
        self.max_steps = max(1, min(max_steps, d))
        self.V = torch.empty(self.max_steps + 1, d, dtype=dtype, device=device)
        self.coefficients = torch.empty(3, self.max_steps, dtype=dtype, device=device)
        on_cpu = self.coefficients.device.type == "cpu"  # then the host reads it in place
        self._host = (
            self.coefficients if on_cpu else torch.empty_like(self.coefficients, device="cpu")
        )
        self._host_view = self._host.numpy()  # reads without a torch call
        self.eps = torch.finfo(dtype).eps
        self.alpha = np.zeros(self.max_steps)  # T on the host: alpha[:m], beta[:m] (beta_m last)
        self.beta = np.zeros(self.max_steps)
        self.size = 0
        self.scale = 0.0  # running max of |alpha|, beta: an estimate of ||A||
        self.invariant = False
        self._bottom, self._top = _End(), _End()
        self._cache_m = 0  # Ritz values and pairs of T_m by (kind, index), for m = _cache_m
        self._cache: dict[tuple[str, int], tuple[float, np.ndarray] | float] = {}

    @property
    def can_step(self) -> bool:
        return not self.invariant and self.size < self.max_steps

    def start(self, v0: torch.Tensor) -> None:
        v = v0.to(self.V.dtype)
        self.V[0] = v / torch.linalg.vector_norm(v)

    def operand(self) -> torch.Tensor:
        """The vector the next step applies A to (for step_pair)."""
        return self.V[self.size]

    def step(self) -> bool:
        """Extends the basis by A v_{m-1}; False once it is full or A-invariant."""
        if not self.can_step:
            return False
        self.finish_step(self.apply(self.operand()))
        return True

    def finish_step(self, w: torch.Tensor) -> None:
        """The rest of a step once ``w`` = A v_{m-1} (a new tensor, updated in place)."""
        j = self.size
        orthogonalised(w, self.V[: j + 1], self.coefficients)
        if self._host is not self.coefficients:
            self._host.copy_(self.coefficients)
        h, h2, beta = self._host_view[:, j].tolist()
        alpha = h + h2
        self.alpha[j], self.beta[j] = alpha, beta
        self.size = j + 1
        self.scale = max(self.scale, abs(alpha), beta)
        threshold = _policy.BREAKDOWN * math.sqrt(self.d) * self.eps * self.scale
        self.invariant = beta <= threshold or self.size == self.d
        if not self.invariant:
            torch.div(w, beta, out=self.V[j + 1])

    def _tridiagonal(self) -> tuple[np.ndarray, np.ndarray]:
        return self.alpha[: self.size], self.beta[: self.size]

    def _cache_for_size(self) -> dict[tuple[str, int], tuple[float, np.ndarray] | float]:
        """Ritz values ("value", i) and pairs ("pair", i) of the current T_m."""
        if self._cache_m != self.size:
            self._cache_m, self._cache = self.size, {}
        return self._cache

    def value(self, i: int) -> float:
        """Ritz value i of T_m (0 = the smallest), by bisection, or as ritz() found it."""
        cache = self._cache_for_size()
        if ("pair", i) in cache:
            return cache[("pair", i)][0]
        if ("value", i) not in cache:
            cache[("value", i)] = tridiagonal.eigenvalue(*self._tridiagonal(), i)
        return cache[("value", i)]

    def max_abs_value(self) -> float:
        """max(|theta_0|, |theta_{m-1}|): |theta_{m-1}| unless a Ritz value lies below
        -|theta_{m-1}|, which one Sturm count tells; only then is theta_0 bisected for."""
        top = abs(self.value(self.size - 1))
        if self.size == 1 or self.count_below(-top) == 0:
            return top
        return max(top, abs(self.value(0)))

    def count_below(self, x: float) -> int:
        """Number of Ritz values below x (a Sturm count)."""
        return tridiagonal.sturm_count(*self._tridiagonal(), x)

    def ritz(self, i: int) -> Ritz:
        """Ritz pair i with its bound, bisected for from the last check at the same end
        (the bottom, or the same offset from the top) when there is one."""
        m = self.size
        cache = self._cache_for_size()
        if ("pair", i) not in cache:
            bottom = i == 0 and m > 1
            from_top = m - 1 - i
            e = self._bottom if bottom else self._top
            hinted = 0 < e.m < m and (bottom or e.from_top == from_top)
            theta, s = tridiagonal.eigenpair(
                *self._tridiagonal(), i, (e.value, e.bound) if hinted else None
            )
            cache[("pair", i)] = theta, s
            if m > 1 and (e.m != m or bottom or e.from_top == from_top):
                e.value, e.bound, e.m, e.from_top = theta, self._bound(s), m, from_top
        theta, s = cache[("pair", i)]
        bound = max(self._bound(s), _policy.product_floor(self.max_abs_value(), self.eps))
        return Ritz(i, m, theta, bound, torch.from_numpy(s))

    def _bound(self, s: np.ndarray) -> float:
        # an invariant space is declared at a beta_m below the breakdown level, not at 0
        return float(self.beta[self.size - 1] * abs(s[-1]))

    def ritz_vector(self, r: Ritz, dtype: torch.dtype) -> torch.Tensor:
        """y = V^T s, unit, accumulated in float64, returned in ``dtype``."""
        s = r.s.to(self.V.device)
        y = s @ self.V[: r.m].double()
        return (y / torch.linalg.vector_norm(y)).to(dtype)


def orthogonalised(w: torch.Tensor, basis: torch.Tensor, coefficients: torch.Tensor) -> None:
    """Orthogonalises w = A v_j (a new tensor, in place) against the basis ``[v_0 .. v_j]``
    (rows) twice by classical Gram-Schmidt. The step's numbers go to column j of
    ``coefficients`` (3, n > j), in the basis' dtype on the device (no host
    synchronisation): rows 0 and 1 the two passes' coefficients of v_j, whose sum is
    alpha_j = v_j^T A v_j (the caller adds them in float64), row 2 beta_j = ||w||; rows 0
    and 1 of the columns before j are overwritten with the other basis vectors'
    coefficients."""
    j = basis.shape[0] - 1
    h = torch.mv(basis, w, out=coefficients[0, : j + 1])
    w.addmv_(basis.mT, h, alpha=-1)
    h2 = torch.mv(basis, w, out=coefficients[1, : j + 1])
    w.addmv_(basis.mT, h2, alpha=-1)
    torch.linalg.vector_norm(w, out=coefficients[2, j])


PairOperator = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def step_pair(a: Lanczos, a_on: bool, b: Lanczos, b_on: bool, apply2: PairOperator) -> bool:
    """One step of each run that is on and can step: both through one ``apply2(va, vb)``
    (new tensors ``(A va, A vb)``, pair_operator) when both do, else the one alone. False
    when neither stepped. The CPU kernel's step_pair."""
    a_on = a_on and a.can_step
    b_on = b_on and b.can_step
    if not (a_on and b_on):
        return (a_on and a.step()) or (b_on and b.step())
    wa, wb = apply2(a.operand(), b.operand())
    a.finish_step(wa)
    b.finish_step(wb)
    return True


def run_with_check(
    lz: Lanczos,
    ck: Lanczos,
    apply2: PairOperator,
    first_ended: Callable[[], bool],
    on_first_end: Callable[[], bool],
    check_decided: Callable[[bool], bool],
) -> None:
    """Advances a first run and its restart check in lockstep (step_pair) until the first
    has ended and the check is decided or not needed: the CPU kernel's run_with_check.
    ``first_ended()``: after a step of the first, whether it has ended; ``on_first_end()``:
    called once then, whether the check is needed; ``check_decided(first_done)``: after a
    step of the check, whether it is decided (while the first runs: whether it may
    pause)."""
    first_done = check_done = False
    while not (first_done and check_done):
        a, b = not first_done, not check_done
        if not step_pair(lz, a, ck, b, apply2):
            break
        if a and first_ended():
            first_done = True
            check_done = not on_first_end() or (check_done and check_decided(True))
        if b and not check_done:
            check_done = check_decided(first_done)
    assert first_done, "first_ended() is true once the first run cannot step"


def pair_operator(
    apply: Callable[[torch.Tensor], torch.Tensor],
    solve: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
) -> PairOperator:
    """The pair operator of a run and its check: ``solve`` ((d, k) -> (d, k) columns) with
    both vectors as the columns of one block, one pass over S or the factor, the results
    as contiguous rows. ``apply`` to each vector instead on the CPU, where torch's BLAS
    (MKL) multiplies S by a two-column block, or solves with two right-hand sides, slower
    than by one vector twice (measured on an AMD EPYC: 780 us against 100-174 us for two
    ``torch.mv`` at d = 768, 1 thread), and the native kernel is the CPU's fast path
    anyway; and for float32 while torch may use TF32 for a float32 matmul (a block product
    is one; ``mv`` is not)."""
    if device.type == "cpu" or not full_fp32(dtype, device):
        return lambda va, vb: (apply(va), apply(vb))

    def apply2(va: torch.Tensor, vb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = solve(torch.stack((va, vb), dim=1)).T.contiguous()
        return w[0], w[1]

    return apply2


@lru_cache(maxsize=16)
def _pseudo_random_unit64(d: int, stream: int) -> torch.Tensor:
    z = np.arange(d, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15 * (stream + 1) % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    p = (z >> np.uint64(11)).astype(np.float64) * (2.0 / 9007199254740992.0) - 1.0
    return torch.from_numpy(p / np.sqrt((p * p).sum()))


def pseudo_random_unit(
    d: int, dtype: torch.dtype, device: torch.device, stream: int = 0
) -> torch.Tensor:
    """The CPU kernel's deterministic start vector (splitmix64 of index + (stream + 1) *
    golden gamma): no RNG state. Streams are independent draws; stream 0 starts every solve."""
    return _pseudo_random_unit64(d, stream).to(device=device, dtype=dtype)


class Acceptance:
    """A Ritz value is accepted only when its error bound meets tol at two consecutive
    steps, a cheap guard against accepting a value that is about to move (a start vector
    nearly orthogonal to the wanted eigenvector makes Lanczos settle on a neighbour first)."""

    def __init__(self) -> None:
        self.last_ok = -2

    def __call__(self, ok: bool, m: int) -> bool:
        accept = ok and self.last_ok == m - 1
        if ok:
            self.last_ok = m
        return accept


def rounding_floor(lz: Lanczos) -> float:
    """Float64 rounding in the Krylov basis perturbs every Ritz value by about eps times the
    largest Ritz magnitude, even once the space is invariant: a floor under the bound."""
    return _policy.FLOOR_SLACK * torch.finfo(torch.float64).eps * lz.max_abs_value()
