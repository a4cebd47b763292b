"""extreme_eigh / top_eigh / condition_number against float64 eigvalsh over generated spectra.

Every test runs on each (device, backend) of conftest.IMPLEMENTATIONS: those taking
``device`` on that device, the others on the CPU implementations.
"""

import math
import re
import warnings

import numpy as np
import pytest
import torch
from conftest import eig_rtol, log_spectrum, rel_err, spd_from_spectrum, unit_norm_error
from hypothesis import example, given, settings
from hypothesis import strategies as st

from condnum import _policy, reference
from condnum import functional as F

ops = torch.ops.condnum
pytestmark = pytest.mark.usefixtures("impl")
#: float32 matrices are tested up to this kappa, float64 ones up to 1e8.
MAX_LOG10_KAPPA = {torch.float32: 5, torch.float64: 8}


@st.composite
def spectra(draw, dtype=None, max_d=256):
    """(S, rtol) with a log-uniform spectrum, optionally with repeated or zero eigenvalues.

    rtol sits a decade below the smallest nonzero eigenvalue, so the numerical-range
    rule keeps all of them and drops the zeros (whose rounding noise is far smaller).
    """
    dtype = dtype or draw(st.sampled_from([torch.float32, torch.float64]))
    d = draw(st.integers(1, max_d))
    log_kappa = draw(st.floats(0, MAX_LOG10_KAPPA[dtype]))
    seed = draw(st.integers(0, 2**31))
    ev = log_spectrum(d, 10**log_kappa, seed)
    if d >= 3 and draw(st.booleans()):  # repeated eigenvalues at both ends
        reps = draw(st.integers(2, d - 1))
        ev[1:reps] = ev[1]
        ev[-reps:] = ev[0]
    n_zero = draw(st.integers(0, d // 2)) if d >= 4 else 0
    if n_zero:
        ev[2 : 2 + n_zero] = 0.0
        log_kappa = min(log_kappa, 3.0 if dtype == torch.float32 else 8.0)
        ev[ev > 0] = ev[ev > 0].clamp(min=10**-log_kappa)
    rtol = 0.1 * ev[ev > 0].min().item() / ev.max().item()
    if n_zero and dtype == torch.float32:
        rtol = max(rtol, 1e-4)  # above float32 rounding noise of the zero eigenvalues
    return spd_from_spectrum(ev, seed, dtype), rtol


@settings(max_examples=60, deadline=None)
@given(spectra())
@example((spd_from_spectrum(torch.ones(1), 0, torch.float64), 0.1))  # d = 1
@example((spd_from_spectrum(torch.full((7,), 3.0), 1, torch.float32), 0.1))  # kappa = 1
def test_extreme_eigenvalues_match_float64_eigvalsh(device, case):
    S, rtol = case
    S = S.to(device)
    lam_min, lam_max, u_min, u_max = F.extreme_eigh(S, rtol=rtol)
    ref_min, ref_max = reference.float64_extremes(S, rtol)
    tol = eig_rtol(S, rtol)
    assert rel_err(lam_max.item(), ref_max) <= tol
    assert rel_err(lam_min.item(), ref_min) <= tol
    # the vectors are unit eigenvectors with the documented sign convention
    for lam, u in ((lam_min, u_min), (lam_max, u_max)):
        assert u.shape == (S.shape[0],) and u.dtype == S.dtype and u.device == S.device
        error, bound = unit_norm_error(u)
        assert error <= bound, (error, bound)
        assert u[u.abs().argmax()] > 0
        residual = (S.double() @ u.double() - lam.double() * u.double()).norm().item()
        assert residual <= math.sqrt(tol) * ref_max


@settings(max_examples=30, deadline=None)
@given(spectra(), st.sampled_from([1e-3, 0.5, 3.0, 1024.0, 1e5]))
def test_kappa_is_at_least_one_and_scale_invariant(case, c):
    S, rtol = case
    kappa = F.condition_number(S, rtol=rtol).item()
    assert kappa >= 1 - 1e-6
    tol = 4 * eig_rtol(S, rtol)  # two kappas, each off by two eigenvalues' errors
    assert rel_err(F.condition_number(c * S, rtol=rtol).item(), kappa) <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_warm_start_converges_to_the_same_pairs(dtype, device):
    S = spd_from_spectrum(log_spectrum(200, 1e4, 3), 3, dtype).to(device)
    cold = F.extreme_eigh(S, rtol=1e-6)
    noise = 1e-3 * torch.randn(200, dtype=dtype, generator=torch.Generator().manual_seed(1))
    noise = noise.to(device)
    warm = F.extreme_eigh(S, rtol=1e-6, v0_min=cold[2] + noise, v0_max=cold[3] - noise)
    tol = 2 * eig_rtol(S, 1e-6)  # two solves, each within eig_rtol of float64
    for a, b in zip(cold[:2], warm[:2], strict=True):
        assert rel_err(a.item(), b.item()) <= tol
    # a warm start orthogonal to the true eigenvector must not be trusted blindly
    ortho = torch.zeros(200, dtype=dtype, device=device)
    ortho[0] = 1.0
    ortho -= (ortho @ cold[2]) * cold[2]
    again = F.extreme_eigh(S, rtol=1e-6, v0_min=ortho)
    assert rel_err(again[0].item(), cold[0].item()) <= tol


def test_top_eigh_matches_extreme_eigh(device):
    S = spd_from_spectrum(log_spectrum(100, 1e3, 5), 5, torch.float64).to(device)
    lam, u = F.top_eigh(S)
    _, ref = reference.float64_extremes(S, 0.0)
    assert rel_err(lam.item(), ref) <= eig_rtol(S, 0.0, end="max")
    assert abs(abs(u @ F.extreme_eigh(S)[3]) - 1) < 1e-6


def test_zero_matrix(device):
    lam_min, lam_max, _, _ = F.extreme_eigh(torch.zeros(4, 4, device=device))
    assert lam_min.item() == 0 and lam_max.item() == 0
    with pytest.raises(ValueError, match="S is zero"):
        F.condition_number(torch.zeros(4, 4, device=device))


def test_unconverged_budget_warns():
    S = spd_from_spectrum(torch.linspace(1, 2, 300, dtype=torch.float64), 0, torch.float64)
    with pytest.warns(UserWarning, match="did not reach tol = 1e-12 in num_iters = 3"):
        F.extreme_eigh(S, num_iters=3, tol=1e-12)


def _top_eigenvalue_extended(S: torch.Tensor) -> float:
    """lam_max of S as stored, to about 1e-19 relative: the Rayleigh quotient, in x87
    extended precision, of float64 eigh's top eigenvector (its error is quadratic in the
    vector's, and float64 eigvalsh's own eps64 ||S|| would swamp a float64 solver's)."""
    u = torch.linalg.eigh(S.double().cpu())[1][:, -1].numpy().astype(np.longdouble)
    A = S.double().cpu().numpy().astype(np.longdouble)
    return float((u @ (A @ u)) / (u @ u))


BELOW_ROUNDING = {torch.float32: 1e-12, torch.float64: 1e-30}


def _unresolved(ev: torch.Tensor, i: int, neighbour: int, level: float) -> float:
    """The documented allowance beyond err at eigenvalue ev[i]: the breakdown level over
    |ev[i]| when its neighbour lies within that level (absolute, ``level`` = BREAKDOWN
    sqrt(d) eps lam_max), a cluster that the rounding of S v does not resolve; else 0."""
    near = 0 <= neighbour < ev.numel() and abs(ev[neighbour] - ev[i]) <= level
    return level / abs(ev[i].item()) if near else 0.0


@settings(max_examples=40, deadline=None)
@given(spectra())
@example((spd_from_spectrum(torch.logspace(0, -2, 200, dtype=torch.float64), 0, torch.float32), 0))
@example((spd_from_spectrum(torch.ones(200, dtype=torch.float64), 1, torch.float64), 0.1))
def test_err_bounds_the_error_when_tol_is_below_rounding(device, case):
    """Asked for a tol that S's dtype cannot resolve, the solver's err still bounds the true
    relative error of what it returns: the Lanczos residual estimate keeps falling below
    the rounding of S v, and err is floored there (policy::product_floor) and at the
    rounding of the returned value to S's dtype. Eigenvalues closer than the breakdown
    level (a cluster split by the rounding of S's entries, or S = I) are not resolved: the
    returned one is within that level of the extreme one (documented)."""
    S, rtol = case
    S = S.to(device)
    tol = BELOW_ROUNDING[S.dtype]
    ev = torch.linalg.eigvalsh(S.double().cpu())
    d = S.shape[0]
    level = _policy.BREAKDOWN * math.sqrt(d) * torch.finfo(S.dtype).eps * ev[-1].item()
    lam_max, _, err = ops.top_eigh(S, 300, tol, None)
    error = rel_err(lam_max.item(), _top_eigenvalue_extended(S))
    assert error <= max(err.item(), _unresolved(ev, d - 1, d - 2, level))
    if S.dtype == torch.float32:  # float64 eigvalsh is exact enough for a float32 S
        lam_min, lam_max, _, _, err = ops.extreme_eigh(S, 300, rtol, tol, None, None)
        ref_min, ref_max = reference.float64_extremes(S, rtol)
        i = int((ev <= ref_min).sum()) - 1
        top, bottom = _unresolved(ev, d - 1, d - 2, level), _unresolved(ev, i, i + 1, level)
        assert rel_err(lam_max.item(), ref_max) <= max(err.item(), top)
        assert rel_err(lam_min.item(), ref_min) <= max(err.item(), bottom)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-10), (torch.float64, 1e-17)])
def test_a_tol_below_rounding_warns_with_the_remedy(dtype, tol):
    S = spd_from_spectrum(log_spectrum(60, 1e2, 4), 4, dtype)
    with pytest.warns(UserWarning, match="tol is below the rounding level of torch.float"):
        F.top_eigh(S, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a tol the dtype resolves converges without one
        F.top_eigh(S, tol=1e-6 if dtype == torch.float32 else 1e-14)


def test_eigenvalue_gradcheck(device):
    S = spd_from_spectrum(torch.tensor([1.0, 2.0, 4.0, 7.0, 9.0]), 0, torch.float64).to(device)
    A = S.clone().requires_grad_()

    def f(A):
        lam_min, lam_max, _, _ = F.extreme_eigh((A + A.T) / 2, tol=1e-13)
        return lam_min, lam_max

    assert torch.autograd.gradcheck(f, (A,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype, device):
    S = spd_from_spectrum(log_spectrum(12, 100.0, 0), 0, dtype).to(device).requires_grad_()
    torch.library.opcheck(ops.extreme_eigh.default, (S, 32, 1e-6, 1e-6, None, None))
    torch.library.opcheck(ops.top_eigh.default, (S, 32, 1e-6, None))


BAD_S = [
    (torch.randn(4), "S must be a 2-D matrix, got a 1-D"),
    (torch.randn(3, 4), "S must be square, got shape \\[3, 4\\]"),
    (torch.empty(0, 0), "S must not be empty"),
    (torch.eye(3, dtype=torch.int32), "S must be float32 or float64, got (Int|torch.int32)"),
    (torch.tensor([[1.0, 2.0], [0.0, 1.0]]), "S must be symmetric"),
    (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), "S contains NaN or Inf"),
    (torch.tensor([[float("inf"), 0.0], [0.0, 1.0]]), "S contains NaN or Inf"),
    (torch.diag(torch.tensor([1.0, -1.0])), "S must be positive semi-definite"),
]


#: The solvers that take (S, rtol, v0_min, v0_max): floored_min, R_ill's, shares the checks.
BOTTOM_SOLVERS = ["extreme_eigh", "floored_min"]


@pytest.mark.parametrize("op", BOTTOM_SOLVERS)
@pytest.mark.parametrize(("S", "match"), BAD_S)
def test_bad_matrix(S, match, op, impl, device):
    if not impl.raises_on_bad_values and re.search("symmetric|NaN|semi-definite", match):
        if op == "extreme_eigh":  # floored_min has no native CUDA kernel
            pytest.skip("the native CUDA kernels return NaN for bad values (test_cuda.py)")
    with pytest.raises(ValueError, match=f"condnum.{op}: {match}"):
        getattr(F, op)(S.to(device))


@pytest.mark.parametrize("op", BOTTOM_SOLVERS)
def test_bad_solver_arguments(op, impl, device):
    solve = getattr(F, op)
    S = torch.eye(3, device=device) + 0.1
    with pytest.raises(ValueError, match=f"{op}: num_iters must be >= 1, got 0"):
        solve(S, num_iters=0)
    with pytest.raises(ValueError, match=f"{op}: rtol must be in \\[0, 1\\), got 2"):
        solve(S, rtol=2.0)
    with pytest.raises(ValueError, match="v0_min must have shape \\(3,\\)"):
        solve(S, v0_min=torch.ones(4, device=device))
    if impl.raises_on_bad_values or op == "floored_min":  # CUDA kernels ignore a zero start
        with pytest.raises(ValueError, match="v0_max must be finite and nonzero"):
            solve(S, v0_max=torch.zeros(3, device=device))
    with pytest.raises(ValueError, match="same dtype"):
        solve(S, v0_max=torch.ones(3, dtype=torch.float64, device=device))


def test_gram_made_indefinite_by_rounding_is_accepted(device):
    """A rank-deficient float32 Gram matrix whose zero eigenvalues rounding made slightly
    negative (about -1e-8 lam_max here, above -sqrt(eps) lam_max): with rtol = 0 they count as
    zeros below the numerical range, not as proof that S is indefinite. S is formed on the
    CPU, so the premise does not depend on the device's Gram kernel."""
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(16, 200, generator=g) * torch.logspace(0, -3, 200)
    S = F.gram(Z)
    ev = torch.linalg.eigvalsh(S.double())
    assert ev[0] < 0  # the premise: rounding made S indefinite
    S = S.to(device)
    with warnings.catch_warnings():  # rounding-level eigenvalues need not converge
        warnings.simplefilter("ignore", UserWarning)
        lam_min, lam_max, _, _ = F.extreme_eigh(S, rtol=0.0)
    assert rel_err(lam_max.item(), ev[-1].item()) <= eig_rtol(S, 0.0, end="max")
    assert 0 <= lam_min.item() <= 200 * torch.finfo(torch.float32).eps * ev[-1].item()


def _step_ranges(fn) -> dict[str, int]:
    """The native CPU kernel's step ranges in one ``fn()`` call (torch.profiler), by name."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    for e in prof.events():
        if e.name.startswith("condnum::") and e.name.endswith("_step"):
            counts[e.name] = counts.get(e.name, 0) + 1
    return counts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_restart_checks_run_alongside_their_first_runs(dtype, impl):
    """Each restart check shares its first run's products: a cold solve takes paired steps
    (one pass over S, or over the shift-and-invert factor, for both runs), a paired step
    being one step of each run. Native only: the portable path marks no steps."""
    if impl.backend != "native":
        pytest.skip("the portable path marks no profiler ranges")
    S = spd_from_spectrum(log_spectrum(300, 1e6, 0), 0, dtype)
    top = _step_ranges(lambda: F.top_eigh(S))
    assert top.get("condnum::lanczos_pair_step", 0) >= _policy.FIRST_CHECK
    both = _step_ranges(lambda: F.extreme_eigh(S))
    assert both.get("condnum::lanczos_pair_step", 0) >= _policy.FIRST_CHECK
    assert both.get("condnum::shift_invert_pair_step", 0) >= _policy.FIRST_CHECK
