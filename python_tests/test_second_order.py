"""Higher derivatives (Hessian-vector products, create_graph=True) of the eigenvalues and the
regularizers, on each (device, backend) of conftest.IMPLEMENTATIONS: against the float64
reference formulation (``torch.linalg.eigh``'s autograd), by ``gradgradcheck``, through the
modules in a user's training step and through ``torch.autograd.functional``."""

import pytest
import torch
from conftest import fuzz_settings, log_spectrum, spd_from_spectrum
from hypothesis import given
from hypothesis import strategies as st

import condnum
from condnum import functional as F
from condnum import reference
from condnum.defaults import DEFAULT_TOL

pytestmark = pytest.mark.usefixtures("impl")
#: Exact eigen-solves: Lanczos spans the whole space when d <= num_iters.
EXACT = {"tol": 1e-13}
#: An eigenpair accurate to ``tol`` gives an eigenvector error about ``tol / gap`` (relative
#: gap), which a Hessian-vector product inherits; a third derivative divides by the gap once
#: more, and eigh's own (the reference) passes through every eigenvector's derivative, so it
#: errs by about ``eps / (smallest gap anywhere)``: at one such spectrum (d = 12, kappa = 9e5)
#: finite differences agreed with ours to 1e-10 and with eigh's to 8e-9. Measured maxima over
#: 40-150 spectra (d <= 80): 0.08 tol/gap for float64 at tol = 1e-13 (0.17 at 1e-7), 0.4
#: tol/gap for float32 at its default tol, 0.19 (tol/gap^2 + eps/smallest gap) for third
#: derivatives.
HVP_TOL_MULTIPLE = THIRD_TOL_MULTIPLE = 10


def _sym(A: torch.Tensor) -> torch.Tensor:
    return (A + A.mT) / 2


def _derivatives(fn, x, v, w=None):
    """``(H v, d(<H v, w>)/dx)`` of the scalar ``fn`` at ``x`` (the second: None without w)."""
    x = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(fn(x), x, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), x, create_graph=w is not None)
    if w is None:
        return hv, None
    (third,) = torch.autograd.grad((hv * w).sum(), x)
    return hv.detach(), third


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.cpu().double() - b).norm() / b.norm()).item()


#: name -> (ours of S, reference of S, which end of the spectrum its gap is at)
FUNCTIONS = {
    "r_ill": (lambda S, k, t: F.r_ill(S, k, rtol=0.0, tol=t), reference.r_ill, "bottom"),
    "r_ill_range": (
        lambda S, k, t: F.r_ill(S, k, rtol=0.0, edge="range", tol=t),
        lambda S, k: reference.r_ill(S, k, rtol=0.0, edge="range"),
        "bottom",
    ),
    "r_well": (lambda S, k, t: F.r_well(S, k, tol=t), reference.r_well, "top"),
    "lam_min": (
        lambda S, k, t: F.extreme_eigh(S, rtol=0.0, tol=t)[0],
        lambda S, k: torch.linalg.eigvalsh(S)[0],
        "bottom",
    ),
    "lam_max": (
        lambda S, k, t: F.extreme_eigh(S, rtol=0.0, tol=t)[1],
        lambda S, k: torch.linalg.eigvalsh(S)[-1],
        "top",
    ),
    "top_eigh": (
        lambda S, k, t: F.top_eigh(S, tol=t)[0],
        lambda S, k: torch.linalg.eigvalsh(S)[-1],
        "top",
    ),
}


def _relative_gap(ev: torch.Tensor, end: str) -> float:
    """The eigenvalue's distance to its neighbour over lam_max: what the derivatives of its
    eigenvector scale with (1/gap in a Hessian-vector product, 1/gap^2 in a third derivative)."""
    e = ev.sort().values
    return ((e[1] - e[0]) if end == "bottom" else (e[-1] - e[-2])).item() / e[-1].item()


def _third_bound(ev: torch.Tensor, gap: float) -> float:
    e = ev.sort().values
    smallest = ((e[1:] - e[:-1]).min() / e[-1]).item()
    eps = torch.finfo(torch.float64).eps
    return THIRD_TOL_MULTIPLE * (EXACT["tol"] / gap**2 + eps / smallest)


@fuzz_settings(25)
@given(
    name=st.sampled_from(sorted(FUNCTIONS)),
    d=st.integers(2, 48),
    log_kappa=st.floats(0.3, 6),
    seed=st.integers(0, 2**31),
    k_offset=st.integers(0, 3),
)
def test_second_and_third_derivatives_match_eigh(name, d, log_kappa, seed, k_offset, device):
    """Exact float64 solves: Hessian-vector products and third derivatives agree with
    eigh's to ``HVP_TOL_MULTIPLE tol / gap`` and ``THIRD_TOL_MULTIPLE (tol / gap^2 +
    eps / smallest gap)``."""
    ours, ref, end = FUNCTIONS[name]
    ev = log_spectrum(d, 10**log_kappa, seed)
    S = spd_from_spectrum(ev, seed, torch.float64)
    g = torch.Generator().manual_seed(seed)
    V, W = (_sym(torch.randn(d, d, dtype=torch.float64, generator=g)) for _ in range(2))
    k = max(1, d - k_offset)
    gap = _relative_gap(ev, end)
    hv, third = _derivatives(lambda A: ours(_sym(A), k, EXACT["tol"]), S.to(device), V, W)
    hv_ref, third_ref = _derivatives(lambda A: ref(_sym(A), k), S, V.cpu(), W.cpu())
    assert _rel(hv, hv_ref) <= HVP_TOL_MULTIPLE * EXACT["tol"] / gap
    assert _rel(third, third_ref) <= _third_bound(ev, gap)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_gradgradcheck(name, device):
    ours, _, _ = FUNCTIONS[name]
    S = spd_from_spectrum(log_spectrum(6, 50.0, 1), 1, torch.float64).to(device)
    assert torch.autograd.gradgradcheck(
        lambda A: ours(_sym(A), 6, EXACT["tol"]), (S.requires_grad_(),)
    )


@fuzz_settings(15)
@given(
    name=st.sampled_from(["r_ill", "r_well", "lam_min"]),
    d=st.integers(3, 64),
    log_kappa=st.floats(0.3, 5),
    seed=st.integers(0, 2**31),
)
def test_float32_hessian_vector_products_at_the_default_tol(name, d, log_kappa, seed, device):
    """float32 S at the default tol: within ``HVP_TOL_MULTIPLE tol / gap`` of float64."""
    ours, ref, end = FUNCTIONS[name]
    ev = log_spectrum(d, 10**log_kappa, seed)
    S = spd_from_spectrum(ev, seed, torch.float64)
    V = _sym(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    hv, _ = _derivatives(lambda A: ours(_sym(A), d, None), S.float().to(device), V.float())
    hv_ref, _ = _derivatives(lambda A: ref(_sym(A), d), S, V)
    assert hv.dtype == torch.float32
    bound = HVP_TOL_MULTIPLE * DEFAULT_TOL[torch.float32] / _relative_gap(ev, end)
    assert _rel(hv, hv_ref) <= bound


@pytest.mark.filterwarnings("ignore:.*rank-deficient Gram")
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("shape", [(40, 12), (6, 12)])  # N >= d; N < d (the N x N Gram)
def test_training_step_hessian_vector_product(shape, normalize, device):
    """``R_ill + R_well`` of features ``X W`` as a user writes it (the modules, float64, on
    the Gram or the trace-normalised one): the Hessian-vector product in ``W`` by
    ``torch.autograd.functional.hvp`` is the reference's."""
    g = torch.Generator().manual_seed(0)
    X, W, V = (
        torch.randn(*s, dtype=torch.float64, generator=g) for s in (shape, (12, 12), (12, 12))
    )
    rtol = 1e-10
    r_ill = condnum.RIll(rtol=rtol, normalize=normalize, **EXACT).to(device)
    r_well = condnum.RWell(normalize=normalize, **EXACT).to(device)

    def loss(W):
        Z = X.to(W.device) @ W
        return r_ill(Z) + r_well(Z)

    def loss_ref(W):
        Z = X @ W
        S = Z.T @ Z if shape[0] >= shape[1] else Z @ Z.T
        if normalize:
            S = S * (S.shape[0] / torch.trace(S))
        return reference.r_ill(S, rtol=rtol) + reference.r_well(S)

    _, hv = torch.autograd.functional.hvp(loss, W.to(device), V.to(device))
    _, hv_ref = torch.autograd.functional.hvp(loss_ref, W, V)
    Z = X @ W
    ev = torch.linalg.eigvalsh(Z.T @ Z if shape[0] >= shape[1] else Z @ Z.T)
    gap = min(_relative_gap(ev, "bottom"), _relative_gap(ev, "top"))
    assert _rel(hv, hv_ref) <= HVP_TOL_MULTIPLE * EXACT["tol"] / gap


def test_r_ill_at_the_floor(device):
    """Eigenvalues below ``rtol * sigma_max`` (rtol = 0.1 here, so that the floor's term is
    not rounding-small): ``sigma_min`` is the floor, passed to ``r_ill`` as
    ``(rtol lam_max, sqrt(rtol) u_max)``, and its derivatives go through the top eigenvector."""
    ev = torch.tensor([0.0, 0.01, 0.3, 0.5, 0.8, 1.0], dtype=torch.float64)
    S = spd_from_spectrum(ev, 3, torch.float64)
    g = torch.Generator().manual_seed(3)
    V, W = (_sym(torch.randn(6, 6, dtype=torch.float64, generator=g)) for _ in range(2))
    assert F.floored_min(S.to(device), 0.1).saturated
    hv, third = _derivatives(lambda A: F.r_ill(_sym(A), rtol=0.1, **EXACT), S.to(device), V, W)
    hv_ref, third_ref = _derivatives(lambda A: reference.r_ill(_sym(A), rtol=0.1), S, V, W)
    gap = _relative_gap(ev, "top")
    assert _rel(hv, hv_ref) <= HVP_TOL_MULTIPLE * EXACT["tol"] / gap
    assert _rel(third, third_ref) <= _third_bound(ev, gap)


def test_repeated_eigenvalue_is_not_an_error(device):
    """At an exactly repeated lam_max the second derivative does not exist; the double
    backward still runs (its eigenvector terms are then non-finite or huge, as eigh's are)."""
    S = torch.diag(torch.tensor([1.0, 2.0, 5.0, 5.0], dtype=torch.float64)).to(device)
    V = torch.ones(4, 4, dtype=torch.float64, device=device)
    hv, _ = _derivatives(lambda A: F.r_well(_sym(A), **EXACT), S, V)
    assert hv.shape == (4, 4)
