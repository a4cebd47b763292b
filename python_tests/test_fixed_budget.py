"""The portable path's fixed-budget mode: ``tol = 0`` runs exactly min(num_iters, d) Lanczos
steps with no host synchronisation.

"No synchronisation" is checked on the CPU by making every way Python can read a tensor's
value (``item``, ``tolist``, ``bool``, ``float``, ``int``, ``index``, ``numpy``, printing)
raise while the op runs; the check itself is shown to catch the convergent mode, which
reads one value per step. Runs on cpu and, with a GPU, cuda (portable backend).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import pytest
import torch
from conftest import eig_rtol, log_spectrum, rel_err, spd_from_spectrum

import condnum
from condnum import _policy, reference
from condnum import functional as F

ops = torch.ops.condnum
#: The convergent mode with a tol no Ritz value meets: it runs every one of its steps.
NEVER = 1e-300
VALUE_READS = ["item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy",
               "__array__", "__format__", "__repr__"]  # fmt: skip


class HostRead(AssertionError):
    """A tensor's value was read by Python (a host synchronisation on a device)."""


@contextlib.contextmanager
def no_value_reads() -> Iterator[None]:
    """Every Python-level read of a tensor value raises HostRead."""

    def forbid(name):
        def method(*_args, **_kwargs):
            raise HostRead(f"Tensor.{name} called")

        return method

    saved = {name: getattr(torch.Tensor, name) for name in VALUE_READS}
    try:
        for name in VALUE_READS:
            setattr(torch.Tensor, name, forbid(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.fixture(params=["cpu", "cuda"], ids=lambda d: f"{d}-portable", scope="module")
def device(request) -> Iterator[torch.device]:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    with condnum.backend("portable"):
        yield torch.device(request.param)


def _spd(d, kappa, seed, dtype, device):
    return spd_from_spectrum(log_spectrum(d, kappa, seed), seed, dtype).to(device)


def test_no_host_synchronisation(device):
    if device.type != "cpu":
        pytest.skip("counted on the CPU (on CUDA, torch.linalg.eigh checks its status on the host)")
    S = _spd(80, 1e3, 0, torch.float64, device)
    v0 = torch.ones(80, dtype=torch.float64)
    with no_value_reads():
        ops.extreme_eigh(S, 40, 1e-6, 0.0, None, None)
        ops.extreme_eigh(S, 40, 1e-6, 0.0, v0, -v0)
        ops.top_eigh(S, 40, 0.0, v0)
        F.extreme_eigh(S.float(), num_iters=20, tol=0.0)
    with no_value_reads(), pytest.raises(HostRead):  # the check catches the convergent mode
        ops.top_eigh(S, 40, 1e-6, None)


def test_on_cuda_only_torch_eigh_synchronises(device, monkeypatch):
    """On CUDA, torch's sync debug mode raises at any synchronisation inside the op except
    within torch.linalg.eigh of its small T (torch reads that solver's status on the host)."""
    if device.type != "cuda":
        pytest.skip("CUDA's sync debug mode")
    eigh = torch.linalg.eigh

    def eigh_allowed_to_sync(*args, **kwargs):
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        try:
            return eigh(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(mode)

    monkeypatch.setattr(torch.linalg, "eigh", eigh_allowed_to_sync)
    S = _spd(64, 1e3, 0, torch.float32, device)
    v0 = torch.ones(64, device=device)
    ops.extreme_eigh(S, 16, 1e-6, 0.0, None, None)  # caches the start vector on the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = ops.extreme_eigh(S, 16, 1e-6, 0.0, v0, v0)
        top = ops.top_eigh(S, 16, 0.0, None)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(out[1]) and torch.isfinite(top[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("warm", [False, True])
def test_equals_the_convergent_mode_after_the_same_steps(device, dtype, warm):
    """Top end: the same start, steps and Ritz pair as the convergent mode run for as many
    steps (a tol it never meets), up to the rounding of the two ways to solve T (a dense
    ``eigh`` on the device; bisection and inverse iteration on the host), each accurate to
    eps64 ||T||; bottom end: its Krylov space's smallest Ritz value above the threshold,
    which with a full basis (m = d) is exact."""
    S = _spd(90, 1e4, 1, dtype, device)
    v0 = torch.linspace(1, 2, 90, dtype=dtype, device=device) if warm else None
    same = {"rtol": 0, "atol": 64 * torch.finfo(dtype).eps}
    for m in (12, 40):
        fixed = ops.top_eigh(S, m, 0.0, v0)
        normal = ops.top_eigh(S, m, NEVER, v0)
        for a, b in zip(fixed, normal, strict=True):
            torch.testing.assert_close(a, b, **same)
        lam_max, u_max = ops.extreme_eigh(S, m, 1e-6, 0.0, None, v0)[1::2]
        torch.testing.assert_close(lam_max, normal[0], **same)
        torch.testing.assert_close(u_max, normal[1], **same)
    lam_min, lam_max, u_min, _, err = ops.extreme_eigh(S, 90, 1e-6, 0.0, v0, v0)
    converged = ops.extreme_eigh(S, 90, 1e-6, F.DEFAULT_TOL[dtype], None, None)
    tol = eig_rtol(S, 1e-6)
    for a, b in ((lam_min, converged[0]), (lam_max, converged[1])):
        assert rel_err(a.item(), b.item()) <= 2 * tol  # each within tol of float64
    ref_min, ref_max = reference.float64_extremes(S, 1e-6)
    assert rel_err(lam_min.item(), ref_min) <= tol
    # A (nearly) full basis: the residual is at rounding level, and err, floored at the
    # rounding of S v (the product floor) relative to lam_min, bounds the true error.
    floor = _policy.product_floor(lam_max.item(), torch.finfo(dtype).eps) / lam_min.item()
    assert err.item() >= floor * (1 - 1e-6)  # floor from the float32-rounded values
    assert rel_err(lam_min.item(), ref_min) <= err.item()
    residual = S.double() @ u_min.double() - lam_min.double() * u_min.double()
    assert residual.norm().item() <= 1e3 * torch.finfo(dtype).eps * ref_max


def test_err_bounds_the_distance_to_an_eigenvalue(device):
    S = _spd(120, 1e2, 2, torch.float64, device)
    lam_min, lam_max, _, _, err = ops.extreme_eigh(S, 30, 1e-6, 0.0, None, None)
    ev = torch.linalg.eigvalsh(S.cpu())
    assert 0 < err.item() < 1
    for lam in (lam_min.item(), lam_max.item()):
        assert (ev - lam).abs().min().item() <= err.item() * abs(lam) * (1 + 1e-9)


def test_breakdown_continues_without_spurious_eigenvalues(device):
    """A Gram of N < d features: the Krylov space becomes invariant after about N steps;
    the fixed budget keeps stepping with zero vectors and still finds both ends."""
    g = torch.Generator().manual_seed(3)
    Z = torch.randn(10, 50, generator=g, dtype=torch.float64) * torch.logspace(0, -1, 50)
    S = (Z.T @ Z).to(device)
    lam_min, lam_max, u_min, u_max, err = ops.extreme_eigh(S, 50, 1e-8, 0.0, None, None)
    ref_min, ref_max = reference.float64_extremes(S, 1e-8)
    assert rel_err(lam_max.item(), ref_max) <= 1e-10
    assert rel_err(lam_min.item(), ref_min) <= 1e-8
    assert torch.isfinite(u_min).all() and torch.isfinite(u_max).all() and err.item() < 1e-8
    eye = ops.extreme_eigh(
        torch.eye(7, dtype=torch.float64, device=device), 7, 1e-6, 0.0, None, None
    )
    assert eye[0].item() == pytest.approx(1.0) and eye[1].item() == pytest.approx(1.0)


def test_edge_values_need_no_errors(device):
    """No value checks: S = 0 gives zeros, NaN gives NaN, a zero warm start is ignored, and a
    huge S is range-scaled on the device."""
    zero = ops.extreme_eigh(torch.zeros(5, 5, device=device), 5, 1e-6, 0.0, None, None)
    assert zero[0].item() == 0 and zero[1].item() == 0 and zero[4].item() == 0
    S = _spd(30, 1e2, 4, torch.float64, device)
    bad = S.clone()
    bad[2, 3] = float("nan")
    assert torch.isnan(ops.extreme_eigh(bad, 20, 1e-6, 0.0, None, None)[1])
    cold = ops.extreme_eigh(S, 30, 1e-6, 0.0, None, None)
    z = torch.zeros(30, dtype=torch.float64, device=device)
    ignored = ops.extreme_eigh(S, 30, 1e-6, 0.0, z, z)
    for a, b in zip(cold, ignored, strict=True):
        torch.testing.assert_close(a, b)
    big = ops.extreme_eigh(S * 2.0**600, 30, 1e-6, 0.0, None, None)
    assert big[1].item() == pytest.approx(cold[1].item() * 2.0**600, rel=1e-12)
    assert big[0].item() == pytest.approx(cold[0].item() * 2.0**600, rel=1e-12)


def test_functional_api_takes_tol_zero_without_a_warning(device):
    S = _spd(40, 1e2, 5, torch.float32, device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lam_min, lam_max, _, _ = F.extreme_eigh(S, num_iters=10, tol=0.0)
        F.top_eigh(S, num_iters=10, tol=0.0)
    assert 0 < lam_min.item() < lam_max.item()


def test_argument_errors(device):
    S = torch.eye(3, device=device)
    with pytest.raises(ValueError, match="num_iters must be >= 1, got 0"):
        ops.extreme_eigh(S, 0, 1e-6, 0.0, None, None)
    with pytest.raises(ValueError, match="rtol must be in \\[0, 1\\), got 2"):
        ops.extreme_eigh(S, 4, 2.0, 0.0, None, None)
    with pytest.raises(ValueError, match="v0 must have shape \\(3,\\)"):
        ops.top_eigh(S, 4, 0.0, torch.ones(4, device=device))
    with pytest.raises(ValueError, match="or 0 for a fixed budget"):
        ops.top_eigh(S, 4, -1.0, None)


@pytest.mark.parametrize("op", ["extreme_eigh", "top_eigh"])
def test_the_native_cpu_kernels_point_to_the_portable_backend(op):
    """tol = 0 is a mode of the portable path only; the native kernels say where it is."""
    S = torch.eye(3)
    with (
        condnum.backend("native"),
        pytest.raises(ValueError, match='condnum.backend\\("portable"\\)'),
    ):
        getattr(F, op)(S, num_iters=4, tol=0.0)
