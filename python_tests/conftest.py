"""Shared fixtures, tolerances and matrix builders for the condnum test suite.

Tolerances are derived in each test from a baseline run on the same input: a kernel's
error against the float64 reference may reach a small multiple of plain PyTorch's error in
S's dtype (``torch.linalg.eigvalsh``, or the reference formula) plus the solver's ``tol``
(see ``eig_rtol`` and ``regularizer_rtol``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

import condnum
from condnum import reference
from condnum.defaults import DEFAULT_TOL, dtype_rtol

#: A result may be off by this multiple of plain PyTorch's error on the same input in the
#: same dtype (``eigvalsh``, or the reference formula): another algorithm or summation order
#: rounds differently, by a small factor.
BASELINE_MULTIPLE = 4.0
#: The solvers stop once a residual bound on each extreme eigenvalue's relative error is
#: below ``tol``; that bound is itself computed in S's dtype, so allow twice ``tol``.
TOL_MULTIPLE = 2.0

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"

#: ``--hardening-long`` multiplies the fuzz tests' hypothesis examples by this.
LONG_EXAMPLES_FACTOR = 10
_hardening_long = False  # set from the command line by pytest_configure


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--hardening-long",
        action="store_true",
        default=False,
        help="long hardening runs: 10x the fuzz examples and larger d in test_fuzz.py, "
        "10 000 forward+backward steps in test_hardening.py's memory test",
    )


#: Derandomized hypothesis: every run draws the same examples, so the suite's verdict does
#: not depend on the run (hypothesis' own CI profile does the same).
settings.register_profile(
    "condnum",
    derandomize=True,
    database=None,
    deadline=None,  # the machine may be shared
    print_blob=True,
    # the op modules' autouse fixtures (device/backend skips) keep no per-example state
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def pytest_configure(config: pytest.Config) -> None:
    global _hardening_long
    _hardening_long = bool(config.getoption("--hardening-long"))
    settings.load_profile("condnum")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # pytest-xdist runs one worker per core (-n 2 on 2 cores): one intra-op thread per
        # worker, and in the processes it starts, so the workers do not oversubscribe them
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def is_hardening_long() -> bool:
    """Whether pytest runs with ``--hardening-long`` (read at test-module import time)."""
    return _hardening_long


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings for a fuzz test: ``max_examples`` examples, LONG_EXAMPLES_FACTOR
    times as many with ``--hardening-long``; no deadline (the machine is shared)."""
    factor = LONG_EXAMPLES_FACTOR if _hardening_long else 1
    return settings(max_examples=max_examples * factor, deadline=None)


@pytest.fixture(scope="session")
def hardening_long() -> bool:
    """True with ``--hardening-long``."""
    return _hardening_long


def spd_from_spectrum(eigenvalues: torch.Tensor, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """``Q diag(eigenvalues) Q^T`` with a seeded random orthogonal Q, built in float64."""
    d = eigenvalues.numel()
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R))
    S = (Q * eigenvalues.to(torch.float64)) @ Q.T
    return ((S + S.T) / 2).to(dtype)


def log_spectrum(d: int, kappa: float, seed: int) -> torch.Tensor:
    """Log-uniform eigenvalues in [1/kappa, 1], with both ends present."""
    g = torch.Generator().manual_seed(seed)
    ev = kappa ** (-torch.rand(d, generator=g, dtype=torch.float64))
    if d >= 2:
        ev[0], ev[1] = 1.0, 1.0 / kappa
    return ev


def solver_tol(dtype: torch.dtype, tol: float | None = None) -> float:
    """The ``tol`` a solve of an S of ``dtype`` ran with (``DEFAULT_TOL`` when None)."""
    if tol is not None:
        return tol
    return DEFAULT_TOL.get(dtype, DEFAULT_TOL[torch.float32])


def _working(S: torch.Tensor) -> torch.Tensor:
    """S in the dtype the kernels compute in (float32 for half types), on the CPU."""
    return (S.float() if S.dtype in (torch.float16, torch.bfloat16) else S).detach().cpu()


def eigvalsh_errors(S: torch.Tensor, rtol: float) -> tuple[float, float]:
    """Relative errors of plain ``eigvalsh`` in S's dtype at ``(sigma_min, sigma_max)`` (the
    numerical range's bottom) against float64 ``eigvalsh``: the baseline of the solvers."""
    ev = torch.linalg.eigvalsh(_working(S))
    lam_min = reference.smallest_in_range(ev, rtol).item()
    ref_min, ref_max = reference.float64_extremes(_working(S), rtol)
    return rel_err(lam_min, ref_min), rel_err(ev[-1].item(), ref_max)


def eig_rtol(S: torch.Tensor, rtol: float, tol: float | None = None, end: str = "both") -> float:
    """Allowed relative error of a solver's extreme eigenvalue of S against float64:
    ``TOL_MULTIPLE * tol`` (its stopping test) plus ``BASELINE_MULTIPLE`` times plain
    ``eigvalsh``'s error in S's dtype at the worse end (``end="max"``: at sigma_max only)."""
    err_min, err_max = eigvalsh_errors(S, rtol)
    baseline = err_max if end == "max" else max(err_min, err_max)
    return TOL_MULTIPLE * solver_tol(_working(S).dtype, tol) + BASELINE_MULTIPLE * baseline


def _regularizer_terms(
    which: str, S: torch.Tensor, k: int, rtol: float
) -> tuple[float, float, float]:
    """``(value, sigma, per_absolute)`` of ``which`` of S in float64: the value, its sigma
    (the floored sigma_min, or sigma_max) and the value's relative change per absolute change
    of D (R_ill = 1 / D: ``R_ill``) or of R_well (``1 / |R_well|``)."""
    ref_fn = reference.r_ill if which == "r_ill" else reference.r_well
    ref = ref_fn(S.double(), k, rtol).item()
    ev = torch.linalg.eigvalsh(S.double())
    if which == "r_ill":
        return ref, max(ev[0].item(), rtol * ev[-1].item()), abs(ref)
    return ref, ev[-1].item(), 1 / abs(ref) if ref else math.inf


def summation_rtol(
    which: str, S: torch.Tensor, k: int | None = None, rtol: float | None = None
) -> float:
    """Relative rounding error of ``r_ill``/``r_well`` of S in S's dtype from (lam, u) given:
    the sum of d^2 terms in another order, ``d eps`` of ``h + sigma^2 / 2``
    (h = ||S||_F^2 / 2k), seen through D's or R_well's cancellation."""
    Sw = _working(S)
    k = Sw.shape[0] if k is None else k
    rtol = dtype_rtol(Sw) if rtol is None else rtol
    _, sigma, per_absolute = _regularizer_terms(which, Sw, k, rtol)
    return _summation_rtol(Sw, k, sigma, per_absolute)


def _summation_rtol(Sw: torch.Tensor, k: int, sigma: float, per_absolute: float) -> float:
    """:func:`summation_rtol` from the terms :func:`_regularizer_terms` gave."""
    h = Sw.double().square().sum().item() / (2 * k)
    return Sw.shape[0] * torch.finfo(Sw.dtype).eps * (h + sigma**2 / 2) * per_absolute


def regularizer_rtol(
    which: str, S: torch.Tensor, k: int | None = None, rtol: float | None = None,
    tol: float | None = None,
) -> float:  # fmt: skip
    """Allowed relative error of ``r_ill``/``r_well`` (``which``) of S against the float64
    reference: ``BASELINE_MULTIPLE`` times the reference formula's own error in S's dtype
    (at least :func:`summation_rtol`), plus ``TOL_MULTIPLE * tol`` propagated from the
    eigenvalue. R_well = sigma_max^2 / 2 - h and D = h - sigma_min^2 / 2 (R_ill = 1 / D)
    move by ``sigma^2 x`` when sigma moves by ``x`` relative."""
    Sw = _working(S)
    k = Sw.shape[0] if k is None else k
    rtol = dtype_rtol(Sw) if rtol is None else rtol
    ref, sigma, per_absolute = _regularizer_terms(which, Sw, k, rtol)
    ref_fn = reference.r_ill if which == "r_ill" else reference.r_well
    summation = _summation_rtol(Sw, k, sigma, per_absolute)
    baseline = max(rel_err(ref_fn(Sw, k, rtol).item(), ref), summation)
    solver = solver_tol(Sw.dtype, tol) * sigma**2 * per_absolute
    return BASELINE_MULTIPLE * baseline + TOL_MULTIPLE * solver


def regularizer_grad_atol(
    which: str, S: torch.Tensor, k: int | None = None, rtol: float | None = None,
    tol: float | None = None,
) -> float:  # fmt: skip
    """Allowed error of each entry of ``r_ill``/``r_well``'s gradient in S against the float64
    reference's: ``BASELINE_MULTIPLE`` times the reference's own gradient error in S's dtype
    (autograd through ``eigh``), plus twice :func:`regularizer_rtol` (R_ill's gradient holds
    R^2) of the largest entry."""
    Sw = _working(S)
    k, rtol = Sw.shape[0] if k is None else k, dtype_rtol(Sw) if rtol is None else rtol
    ref_fn = reference.r_ill if which == "r_ill" else reference.r_well
    grads = []
    with _single_thread():  # eigh of a small S: OpenMP barriers cost 100x on a shared CPU
        for A in (Sw.double(), Sw):
            A = A.clone().requires_grad_()
            (g,) = torch.autograd.grad(ref_fn(A, k, rtol), A)
            grads.append(g.double())
    scale = grads[0].abs().max().item()
    baseline = (grads[1] - grads[0]).abs().max().item()
    return BASELINE_MULTIPLE * baseline + 2 * regularizer_rtol(which, S, k, rtol, tol) * scale


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def unit_norm_error(u: torch.Tensor) -> tuple[float, float]:
    """``|‖u‖ − 1|`` next to what rounding a unit vector's entries to u's dtype allows,
    ``4 sqrt(d) eps`` (each entry carries a relative error <= eps / 2): ``(error, bound)``."""
    bound = 4 * math.sqrt(u.numel()) * torch.finfo(u.dtype).eps
    return abs(u.double().norm().item() - 1), bound


def relayout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x``'s values (2-D) in another memory layout; the storage around the view is NaN."""
    r, c = x.shape
    if layout == "contiguous":
        return x.contiguous()
    if layout == "column-major":
        return x.T.contiguous().T
    if layout == "stepped":  # strides (6c, 3), offset 3c
        view = torch.full((2 * r, 3 * c), float("nan"), dtype=x.dtype)[1::2, ::3]
    elif layout == "padded":  # row stride c + 5, offset 2
        view = torch.full((r, c + 5), float("nan"), dtype=x.dtype)[:, 2 : 2 + c]
    else:  # as_strided: column-major with leading dimension r + 3, at offset 7
        storage = torch.full((7 + (r + 3) * c,), float("nan"), dtype=x.dtype)
        view = storage.as_strided((r, c), (1, r + 3), 7)
    view.copy_(x)
    return view


CONVERGENCE_WARNING = re.compile(
    r"did not reach tol = \S+ in num_iters = \d+ Lanczos steps "
    r"\(relative error bound (\S+)\); (increase num_iters|tol is below the rounding level)"
)


def call_with_bound(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` and the error bound of its convergence warning (None if none).

    The solvers' documented UserWarning (budget exhausted) is the only warning allowed; its
    bound is returned so that callers loosen their check to what the warning admits.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    bound = None
    for w in caught:
        if issubclass(w.category, condnum.NumericalRangeWarning):  # tested in test_edge.py
            continue
        match = CONVERGENCE_WARNING.search(str(w.message))
        assert w.category is UserWarning and match, f"unexpected warning: {w.message}"
        bound = max(bound or 0.0, float(match.group(1)))
    return out, bound


#: torch >= 2.9's per-backend float32 precision settings (attribute paths under
#: torch.backends); their getters resolve a "none" from the parent setting.
FP32_PRECISION_SETTINGS = (
    "fp32_precision",
    "mkldnn.fp32_precision",
    "mkldnn.matmul.fp32_precision",
    "cuda.matmul.fp32_precision",
)
#: Whether this torch has them.
HAS_FP32_PRECISION = hasattr(torch.backends, "fp32_precision")


def _backends_attr(path: str) -> tuple[object, str]:
    *parents, name = path.split(".")
    owner = torch.backends
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


@contextlib.contextmanager
def fp32_matmul_precision(setting: str, value: str) -> Iterator[None]:
    """torch's float32 matmul precision set for the block: ``setting`` "legacy"
    (``torch.set_float32_matmul_precision(value)``) or one of FP32_PRECISION_SETTINGS;
    every setting is restored after: the legacy one first (setting it sets the per-backend
    ones too), then the per-backend ones where they exist."""
    legacy = torch.get_float32_matmul_precision()  # raises if a test left them mixed
    saved = {p: getattr(*_backends_attr(p)) for p in FP32_PRECISION_SETTINGS if HAS_FP32_PRECISION}
    try:
        if setting == "legacy":
            torch.set_float32_matmul_precision(value)
        else:
            setattr(*_backends_attr(setting), value)
        yield
    finally:
        torch.set_float32_matmul_precision(legacy)
        for path, before in saved.items():
            setattr(*_backends_attr(path), before)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.exists():
        pytest.skip(f"shared data not found at {DATA_DIR}")
    return DATA_DIR


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP barriers stall 2 threads."""
    with _single_thread():
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """One intra-op thread for a whole module of small-matrix tests, where threads only add
    synchronisation cost on a shared CPU."""
    with _single_thread():
        yield


# ----------------------------------------------------------------------------- implementations


@dataclass(frozen=True)
class Impl:
    """One (device, backend) pair the op tests run on."""

    device: str
    backend: str

    @property
    def raises_on_bad_values(self) -> bool:
        """Value errors (NaN/Inf, asymmetry, indefiniteness) raise, as on the CPU; the native
        CUDA kernels return NaN instead (no host synchronisation)."""
        return not (self.device == "cuda" and self.backend == "native")


#: The op tests run over these; the CUDA ones skip, visibly, without a GPU.
IMPLEMENTATIONS = [Impl(d, b) for d in ("cpu", "cuda") for b in ("native", "portable")]


@pytest.fixture(scope="module", params=IMPLEMENTATIONS, ids=lambda i: f"{i.device}-{i.backend}")
def impl(request: pytest.FixtureRequest) -> Iterator[Impl]:
    """The (device, backend) of an op test module's run, with that backend active."""
    impl: Impl = request.param
    if impl.device == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("CUDA is not available")
        if impl.backend == "native" and not condnum.built_with_cuda():
            pytest.skip("condnum was built without its CUDA kernels")
    with condnum.backend(impl.backend):
        yield impl


@pytest.fixture
def device(impl: Impl) -> torch.device:
    """The device of a test written for any device (requesting it opts into CUDA runs)."""
    return torch.device(impl.device)


@pytest.fixture(autouse=True)
def _cpu_tests_run_on_cpu(request: pytest.FixtureRequest) -> None:
    """In the op modules (which use ``impl``), a test that does not take ``device`` builds
    its tensors on the CPU: it runs for the CPU implementations only."""
    if "impl" in request.fixturenames and "device" not in request.fixturenames:
        if request.getfixturevalue("impl").device != "cpu":
            pytest.skip("a CPU-only test (it does not take the device fixture)")
