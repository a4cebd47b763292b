"""R_ill at the edge of the numerical range: floored sigma_min, kappa target, float64 switch.

States that training is meant to reach (kappa beyond what the dtype resolves, eigenvalues
at or below the floor, rank-deficient batches, rounding-negative eigenvalues of a Gram)
give finite values and gradients; the floored definition equals the paper's wherever the
whole spectrum is in range and is continuous where eigenvalues leave it.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import (
    log_spectrum,
    regularizer_grad_atol,
    regularizer_rtol,
    rel_err,
    spd_from_spectrum,
)
from hypothesis import given
from hypothesis import strategies as st

import condnum
from condnum import functional as F
from condnum import reference
from condnum.modules import NumericalRangeWarning, default_kappa_target

#: Every test runs for the CPU implementations (native and portable; conftest.impl).
pytestmark = pytest.mark.usefixtures("impl")

DTYPES = (torch.float32, torch.float64)
#: Relative change of R_ill allowed between neighbouring points of a walk whose eigenvalue
#: moves by ``step * floor``: |dD| <= lam dlam, far below this for the spectra drawn.
WALK_JUMP = 1e-3


def paper_r_ill(S: torch.Tensor, k: int | None = None) -> float:
    """The paper's R_ill with the true smallest eigenvalue (float64 eigvalsh)."""
    ev = torch.linalg.eigvalsh(S.double())
    k = S.shape[0] if k is None else k
    return 1.0 / (ev.square().sum().item() / (2 * k) - 0.5 * ev[0].item() ** 2)


@given(
    d=st.integers(2, 40),
    log_kappa=st.floats(0.5, 5.0),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from(DTYPES),
)
def test_floor_equals_paper_in_range(d, log_kappa, seed, dtype):
    """With every eigenvalue above rtol * lam_max, both edges give the paper's value."""
    S = spd_from_spectrum(log_spectrum(d, 10**log_kappa, seed), seed, dtype)
    expected = paper_r_ill(S)
    tol = regularizer_rtol("r_ill", S)
    for edge in ("floor", "range"):
        got = F.r_ill(S, edge=edge).item()
        assert rel_err(got, expected) <= tol


@given(
    d=st.integers(3, 30),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from(DTYPES),
    k_frac=st.sampled_from([1.0, 0.5]),
)
def test_walk_through_the_floor(d, seed, dtype, k_frac):
    """lam_1 shrinks from 4x the floor to 0: value and gradient finite, continuous, and equal
    to the float64 reference of the floored definition at every point."""
    rtol = 1e-3
    k = max(1, int(d * k_frac))
    base = log_spectrum(d, 10.0, seed)  # in [0.1, 1], lam_max = 1
    prev = None
    # 40 points: none exactly at the floor (t = 1), where the gradient's rank-one part
    # switches from lam_1 u_1 u_1^T to rtol lam_floor u_max u_max^T.
    for t in torch.linspace(4.0, 0.0, 40).tolist():
        ev = base.clone()
        ev[1] = t * rtol  # the bottom eigenvalue walks through the floor rtol * lam_max
        S = spd_from_spectrum(ev, seed, dtype).requires_grad_(True)
        r = F.r_ill(S, k, rtol)
        (g,) = torch.autograd.grad(r, S)
        S64 = S.detach().double().requires_grad_(True)
        r_ref = reference.r_ill(S64, k, rtol)
        (g_ref,) = torch.autograd.grad(r_ref, S64)
        assert torch.isfinite(r) and torch.isfinite(g).all()
        assert rel_err(r.item(), r_ref.item()) <= regularizer_rtol("r_ill", S, k, rtol)
        atol = regularizer_grad_atol("r_ill", S, k, rtol)
        torch.testing.assert_close(g.double(), g_ref, rtol=0.0, atol=atol)
        if prev is not None:
            assert abs(r.item() - prev) <= WALK_JUMP * abs(prev)
        prev = r.item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_r_ill_at_kappa_one_is_finite(dtype):
    """kappa = 1 (D = 0): D is floored at 64 eps ||S||_F^2 / (2k), no error."""
    S = torch.eye(6, dtype=dtype) * 3.0
    r = F.r_ill(S)
    eps = torch.finfo(dtype).eps
    expected = 1.0 / (64 * eps * S.double().square().sum().item() / 12)
    assert rel_err(r.item(), expected) <= len(S) * eps  # a sum of 6 squares, rounded


@pytest.mark.parametrize("dtype", DTYPES)
def test_rounding_negative_gram_with_rtol_zero(dtype):
    """A Gram of rank-deficient features, indefinite by rounding, with rtol = 0: no error;
    R_ill sits at the floor (0), i.e. D = ||S||_F^2 / (2k)."""
    torch.manual_seed(0)
    Z = torch.randn(16, 4, dtype=dtype) @ torch.randn(4, 24, dtype=dtype)  # rank 4, d = 24
    S = F.gram(Z).requires_grad_(True)
    m = F.floored_min(S, 0.0)
    assert bool(m.saturated) and m.lam.item() == 0
    r = F.r_ill(S, rtol=0.0)
    (g,) = torch.autograd.grad(r, S)
    expected = 1.0 / (S.detach().double().square().sum().item() / 48)
    assert rel_err(r.item(), expected) <= regularizer_rtol("r_ill", S, rtol=0.0)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("shape", [(64, 768), (8, 512)])
@pytest.mark.parametrize("module", [condnum.RIll, condnum.RWell])
def test_modules_on_rank_deficient_batches(shape, module):
    """N < d with the defaults: the N nonzero eigenvalues (Z Z^T, k = N), finite, one warning."""
    torch.manual_seed(0)
    Z = torch.randn(*shape, requires_grad=True)
    reg = module()
    with pytest.warns(NumericalRangeWarning, match="N = .* < d"):
        value = reg(Z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per module, not per call
        value = reg(Z)
    (g,) = torch.autograd.grad(value, Z)
    assert torch.isfinite(value) and torch.isfinite(g).all()
    small = (Z.detach() @ Z.detach().T).double()
    ref = reference.r_ill(small) if module is condnum.RIll else reference.r_well(small)
    which = "r_ill" if module is condnum.RIll else "r_well"
    assert rel_err(value.item(), ref.item()) <= regularizer_rtol(which, small.float())


def test_kappa_target_stops_pushing():
    """kappa >= kappa_target: the value is kept and the gradient is zero; below it, not."""
    S = spd_from_spectrum(log_spectrum(12, 1e3, 3), 3, torch.float64)
    for target, pushes in ((1e2, False), (1e4, True)):
        X = S.clone().requires_grad_(True)
        reg = condnum.RIll(input="gram", kappa_target=target)
        value = reg(X)
        (g,) = torch.autograd.grad(value, X)
        assert rel_err(value.item(), paper_r_ill(S)) <= regularizer_rtol("r_ill", S)
        assert bool(g.abs().max() > 0) == pushes
        assert reg.last["active"] == pushes and reg.last["kappa"] == pytest.approx(1e3, rel=1e-5)


def test_saturated_stops_pushing_and_warns_once():
    """An exact zero eigenvalue (a collapsed direction) is at the floor: one warning, no push."""
    ev = log_spectrum(10, 1e2, 5)
    ev[1] = 0.0
    S = spd_from_spectrum(ev, 5, torch.float64).requires_grad_(True)
    reg = condnum.RIll(input="gram", kappa_target=math.inf)
    with pytest.warns(NumericalRangeWarning, match="numerical floor"):
        value = reg(S)
    (g,) = torch.autograd.grad(value, S)
    assert torch.isfinite(value) and not g.any()
    assert reg.last["saturated"] and not reg.last["active"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg(S)


def test_float32_features_move_to_float64():
    """float32 features whose kappa nears float32's ceiling: solved in float64 from then on."""
    d = 8
    ev = torch.logspace(0, -6, d, dtype=torch.float64)  # kappa(Z^T Z) = 1e6 > 0.01 / (d eps32)
    Z = torch.linalg.cholesky(spd_from_spectrum(ev, 1, torch.float64)).T.float()
    Z = Z.requires_grad_(True)
    reg = condnum.RIll()
    reg(Z)
    assert reg.float64 and not reg.last["float64"]  # switched after this call
    value = reg(Z)
    assert reg.u_min.dtype == torch.float64 and value.dtype == torch.float32  # as before
    (g,) = torch.autograd.grad(value, Z)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
    assert reg.last["kappa"] == pytest.approx(1e6, rel=1e-2)


def test_default_kappa_target():
    assert default_kappa_target(torch.float32, 32) == pytest.approx(1 / torch.finfo().eps)
    assert default_kappa_target(torch.bfloat16, 32) == default_kappa_target(torch.float32, 32)
    eps64 = torch.finfo(torch.float64).eps
    assert default_kappa_target(torch.float64, 768) == pytest.approx(0.01 / (768 * eps64))


@pytest.mark.parametrize("bad", [dict(edge="middle"), dict(rtol=1.5), dict(kappa_target=0.5)])
def test_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        condnum.RIll(**bad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio", [0.25, 0.9, 1.1, 4.0])
def test_floor_test_matches_the_spectrum(dtype, ratio):
    """floored_min's floor test (a float64 Cholesky of S/lam_max - rtol I) says "saturated"
    exactly when lam_1 <= rtol lam_max: lam_1 = ratio * rtol * lam_max, either side of it."""
    d = 40
    rtol = 100 * d * torch.finfo(dtype).eps  # far above S's rounding, so ratio decides
    ev = log_spectrum(d, 1e2, 7)
    ev[1] = ratio * rtol
    S = spd_from_spectrum(ev, 7, dtype)
    true = torch.linalg.eigvalsh(S.double())
    lam_max = torch.tensor(true[-1].item(), dtype=dtype)
    expected = true[0].item() <= rtol * true[-1].item()
    assert bool(F.below_floor(S, lam_max, rtol)) == expected == (ratio < 1)
    assert bool(F.floored_min(S, rtol).saturated) == expected
