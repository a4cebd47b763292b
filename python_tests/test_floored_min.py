"""floored_min (R_ill's sigma_min): the floor test and the bottom of the spectrum from one
float64 factorisation, against float64 eigvalsh, on each (device, backend).

The floor is sigma = rtol * lam_max: ``saturated`` says lam_1 <= sigma (a Cholesky of
S - sigma I fails), and in range lam_min = lam_1, from plain Lanczos or from shift-and-invert
Lanczos through that same factor.
"""

import math

import pytest
import torch
from conftest import eig_rtol, log_spectrum, rel_err, spd_from_spectrum, unit_norm_error
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

from condnum import functional as F
from condnum import reference
from condnum.portable import eigh as portable_eigh

ops = torch.ops.condnum
pytestmark = pytest.mark.usefixtures("impl")


@st.composite
def floor_cases(draw):
    """(S, rtol, saturated): lam_1 = ratio * rtol * lam_max, ratio on either side of 1 by a
    factor 2 or more, and rtol far above S's rounding (100 d eps), so the spectrum decides."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    d = draw(st.integers(2, 160))
    seed = draw(st.integers(0, 2**31))
    ratio = draw(st.sampled_from([0.1, 0.5, 2.0, 8.0]))
    lowest_rtol = 100 * d * torch.finfo(dtype).eps
    # lam_1 = 10^-log_kappa, rtol = lam_1 / ratio: between lowest_rtol and 0.8
    min_log_kappa = max(0.0, math.log10(1.25 / ratio))
    max_log_kappa = min(math.log10(ratio / lowest_rtol), 6.0)
    log_kappa = draw(st.floats(min_log_kappa, max_log_kappa))
    ev = log_spectrum(d, 10**log_kappa, seed)  # lam_max = 1
    return spd_from_spectrum(ev, seed, dtype), ev.min().item() / ratio, ratio < 1


@settings(max_examples=60, deadline=None)
@given(floor_cases())
def test_floor_and_bottom_match_float64_eigvalsh(device, case):
    S, rtol, saturated = case
    S = S.to(device)
    m = F.floored_min(S, rtol)
    assert bool(m.saturated) == saturated
    ref_min, ref_max = reference.float64_extremes(S, 0.0)
    tol = eig_rtol(S, 0.0)
    assert rel_err(m.lam_max.item(), ref_max) <= tol
    if saturated:
        assert m.lam.item() == pytest.approx(rtol * m.lam_max.item(), rel=1e-6)
        torch.testing.assert_close(m.u, m.u_max * math.sqrt(rtol))
    else:
        assert rel_err(m.lam.item(), ref_min) <= tol
        torch.testing.assert_close(m.u, m.u_min)
    for u in (m.u_min, m.u_max):
        error, bound = unit_norm_error(u)
        assert error <= bound and u[u.abs().argmax()] > 0


def _shift_invert_runs(backend: str, monkeypatch, fn) -> int:
    """The shift-and-invert runs ``fn()`` made through a factor it was handed: counted on the
    portable path; on the native one 1 if it took shift-and-invert steps (its only such run
    is through the floor's factor), else 0."""
    if backend == "portable":
        calls = []
        original = portable_eigh.invert_bottom
        monkeypatch.setattr(
            portable_eigh, "invert_bottom", lambda *a: calls.append(1) or original(*a)
        )
        fn()
        return len(calls)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    steps = [e for e in prof.events() if e.name == "condnum::shift_invert_pair_step"]
    return int(bool(steps))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ill_conditioned_bottom_comes_through_the_floor_factor(impl, monkeypatch, dtype):
    """kappa = 1e6 at d = 300: plain Lanczos gives the bottom up, shift-and-invert through
    the factor of S - sigma I finds it, to the solver's tolerance."""
    if impl.device != "cpu":
        pytest.skip("counts the runs of the CPU implementations")
    S = spd_from_spectrum(log_spectrum(300, 1e6, 4), 4, torch.float64).to(dtype)
    S64 = S.double()  # float32 S does not resolve kappa = 1e6: solve the float64 Gram
    box = {}
    runs = _shift_invert_runs(impl.backend, monkeypatch, lambda: box.update(m=F.floored_min(S64)))
    m = box["m"]
    assert runs == 1 and not bool(m.saturated)
    ref_min, _ = reference.float64_extremes(S64, 0.0)
    assert rel_err(m.lam.item(), ref_min) <= eig_rtol(S64, 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_warm_starts_give_the_same_answer(dtype, device):
    S = spd_from_spectrum(log_spectrum(200, 1e3, 3), 3, dtype).to(device)
    cold = F.floored_min(S)
    noise = 1e-3 * torch.randn(200, dtype=dtype, generator=torch.Generator().manual_seed(1))
    noise = noise.to(device)
    warm = F.floored_min(S, v0_min=cold.u_min + noise, v0_max=cold.u_max - noise)
    tol = 2 * eig_rtol(S, 0.0)
    assert rel_err(warm.lam.item(), cold.lam.item()) <= tol
    assert rel_err(warm.lam_max.item(), cold.lam_max.item()) <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_budget_agrees_with_the_convergent_mode(impl, dtype, device):
    """tol = 0 with num_iters = d: the whole Krylov space, the same floor and bottom (a mode
    of the portable backend; the native kernels refuse it)."""
    S = spd_from_spectrum(log_spectrum(40, 1e2, 2), 2, dtype).to(device)
    if impl.backend == "native":
        with pytest.raises(ValueError, match="floored_min: tol = 0 .* portable backend"):
            F.floored_min(S, num_iters=40, tol=0.0)
        return
    for rtol in (1e-3, 0.5):  # in range, saturated
        exact = F.floored_min(S, rtol)
        fixed = F.floored_min(S, rtol, num_iters=40, tol=0.0)
        assert bool(fixed.saturated) == bool(exact.saturated) == (rtol == 0.5)
        assert rel_err(fixed.lam.item(), exact.lam.item()) <= 2 * eig_rtol(S, 0.0)


def test_zero_S_is_saturated_at_zero(device):
    m = F.floored_min(torch.zeros(5, 5, device=device))
    assert bool(m.saturated) and m.lam.item() == 0 and m.lam_max.item() == 0


def test_indefinite_S_is_refused(impl):
    if not impl.raises_on_bad_values:
        pytest.skip("this implementation does not raise on bad values")
    ev = log_spectrum(30, 1e2, 1)
    ev[0] = -1e-2
    S = spd_from_spectrum(ev, 1, torch.float64).to(impl.device)
    with pytest.raises(ValueError, match="condnum.floored_min: S must be positive semi-definite"):
        F.floored_min(S)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype, device):
    S = spd_from_spectrum(log_spectrum(12, 100.0, 0), 0, dtype).to(device)
    torch.library.opcheck(ops.floored_min.default, (S, 32, 1e-6, 1e-6, None, None))
    torch.library.opcheck(ops.floored_min.default, (S, 32, 0.5, 1e-6, S[0], S[1]))
