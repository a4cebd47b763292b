"""Shared fixtures, tolerances and matrix builders for the condnum test suite.

Tolerances are named and derived from what plain PyTorch achieves: a kernel's error
against the float64 reference must be within the solver's requested accuracy, or a
small multiple of plain ``torch.linalg.eigvalsh``'s error in the same dtype.
"""

from __future__ import annotations

import contextlib
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

#: Requested relative accuracy of extreme eigenvalues (condnum.functional.DEFAULT_TOL),
#: times a slack for the error-bound estimate and the input's rounding.
EIG_RTOL = {torch.float32: 1e-3, torch.float64: 1e-6}
#: Our error may also be up to this multiple of float32/float64 eigvalsh's own error.
TORCH_BASELINE_MULTIPLE = 4.0
#: Regularizer values (sums over d^2 entries) against the float64 reference.
VALUE_RTOL = {torch.float32: 2e-3, torch.float64: 1e-6}

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


def eigvalsh_lam_min_error(S: torch.Tensor, rtol: float, lam_min64: float) -> float:
    """Relative error of plain ``eigvalsh`` in S's dtype (float32 for half types) on the
    bottom of the numerical range: the baseline a kernel's error is measured against."""
    S = S.float() if S.dtype in (torch.float16, torch.bfloat16) else S
    lam_min = reference.smallest_in_range(torch.linalg.eigvalsh(S.cpu()), rtol)
    return rel_err(lam_min.item(), lam_min64)


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


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
    r"\(relative error bound (\S+)\); increase num_iters"
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
