"""r_ill / r_well and the RIll / RWell modules: values, analytic gradients, properties, on
each (device, backend) of conftest.IMPLEMENTATIONS (tests without ``device`` on the CPU
implementations only)."""

import pytest
import torch
from conftest import log_spectrum, regularizer_rtol, rel_err, spd_from_spectrum
from hypothesis import example, given, settings
from hypothesis import strategies as st

import condnum
from condnum import functional as F
from condnum import reference

ops = torch.ops.condnum
pytestmark = pytest.mark.usefixtures("impl")
#: Exact eigen-solves for gradcheck: Lanczos spans the whole space when d <= num_iters.
EXACT = {"tol": 1e-13}


def _spd(d, kappa, seed, dtype=torch.float64):
    return spd_from_spectrum(log_spectrum(d, kappa, seed), seed, dtype)


@settings(max_examples=40, deadline=None)
@given(
    d=st.integers(2, 128),
    log_kappa=st.floats(0.5, 6),
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    k_offset=st.integers(0, 5),
)
# lam_max gap of 0.33%: an r^2/gap convergence test accepted the second eigenvalue
@example(d=27, log_kappa=1.0, seed=346, dtype=torch.float32, k_offset=0)
def test_values_match_reference(d, log_kappa, seed, dtype, k_offset, device):
    S = _spd(d, 10**log_kappa, seed, dtype)
    k = max(1, d - k_offset)
    rtol = 0.1 * 10**-log_kappa
    ref_well = reference.r_well(S.double(), k).item()
    Sd = S.to(device)
    assert rel_err(F.r_well(Sd, k).item(), ref_well) <= regularizer_rtol("r_well", S, k)
    ref_ill = reference.r_ill(S.double(), k, rtol).item()
    assert rel_err(F.r_ill(Sd, k, rtol).item(), ref_ill) <= regularizer_rtol("r_ill", S, k, rtol)


@settings(max_examples=40, deadline=None)
@given(d=st.integers(2, 64), log_kappa=st.floats(0, 6), seed=st.integers(0, 2**31))
def test_r_well_nonnegative_and_r_ill_positive(d, log_kappa, seed):
    S = _spd(d, 10**log_kappa, seed)
    assert F.r_well(S).item() >= -1e-12 * S.square().sum().item()
    if log_kappa > 1e-3:
        assert F.r_ill(S, rtol=0.0).item() > 0


def test_r_well_zero_iff_all_eigenvalues_equal():
    S = spd_from_spectrum(torch.full((6,), 2.5, dtype=torch.float64), 0, torch.float64)
    assert abs(F.r_well(S).item()) < 1e-12
    S2 = spd_from_spectrum(torch.tensor([2.5] * 5 + [2.6], dtype=torch.float64), 0, torch.float64)
    assert F.r_well(S2).item() > 1e-4


def test_r_ill_at_kappa_one(impl, device):
    """D = 0 (kappa = 1, or d = 1): every implementation returns 1/D_eff with
    D_eff = 64 eps(S) ||S||_F^2 / (2k) (D at rounding level), never an error or +inf."""
    for S in (3.0 * torch.eye(5, device=device), torch.eye(1, dtype=torch.float64, device=device)):
        value = F.r_ill(S).item()
        d_eff = 64 * torch.finfo(S.dtype).eps * S.double().square().sum().item() / (2 * len(S))
        # the sum of d squares in S's dtype, rounded
        assert rel_err(value, 1 / d_eff) <= len(S) * torch.finfo(S.dtype).eps


@pytest.mark.parametrize("fn", [F.r_ill, F.r_well])
def test_gradcheck_from_S(fn, device):
    S = _spd(7, 50.0, 0).to(device).requires_grad_()
    # S must stay symmetric under finite differences: differentiate through (A + A^T) / 2
    assert torch.autograd.gradcheck(lambda A: fn((A + A.T) / 2, **EXACT), (S,))


def test_degenerate_extremes_match_the_reference(device):
    """Repeated sigma_min (x3) and sigma_max (x2): values equal the float64 reference, and
    each gradient is a valid subgradient: ``G_well + S/k = sigma_max v v^T`` and
    ``D^2 G_ill + S/k = sigma_min u u^T`` with unit ``v``, ``u`` in the top and bottom
    eigenspaces. Along a direction that moves each eigenspace as a whole (every
    subgradient agrees there) the derivative equals the reference's."""
    ev = torch.tensor([1.0, 1.0, 1.0, 3.0, 5.0, 5.0], dtype=torch.float64)
    S = spd_from_spectrum(ev, 2, torch.float64)
    k = len(ev)
    _, V = torch.linalg.eigh(S)
    P_bottom, P_top = V[:, :3] @ V[:, :3].T, V[:, 4:] @ V[:, 4:].T
    # eigenspace-wise shifts: commutes with S, keeps each repeated eigenvalue repeated
    E = 0.7 * P_bottom - 0.4 * (V[:, 3:4] @ V[:, 3:4].T) + 1.3 * P_top
    for fn, ref_fn, sigma, P in (
        (F.r_well, reference.r_well, 5.0, P_top),
        (F.r_ill, reference.r_ill, 1.0, P_bottom),
    ):
        rtol = regularizer_rtol(fn.__name__, S, k, tol=EXACT["tol"])
        S_ours = S.to(device).requires_grad_()
        value = fn(S_ours, **EXACT)
        (G,) = torch.autograd.grad(value, S_ours)
        S_ref = S.clone().requires_grad_()
        ref = ref_fn(S_ref)
        (G_ref,) = torch.autograd.grad(ref, S_ref)
        G, value = G.cpu(), value.item()
        assert rel_err(value, ref.item()) <= rtol
        assert torch.isfinite(G).all()
        # the rank-one part sigma w w^T, with w a unit vector of the repeated eigenspace
        scale = 1.0 if fn is F.r_well else (1 / value) ** 2
        A = G * scale + S / k
        torch.testing.assert_close(A, A.T, rtol=0, atol=1e-12)
        torch.testing.assert_close(P @ A @ P, A, rtol=0, atol=rtol * sigma)
        assert rel_err(torch.trace(A).item(), sigma) <= rtol
        assert rel_err(torch.linalg.matrix_norm(A, 2).item(), sigma) <= rtol  # rank one
        assert rel_err((G * E).sum().item(), (G_ref * E).sum().item()) <= rtol


@pytest.mark.filterwarnings("ignore:.*rank-deficient Gram")
@pytest.mark.parametrize("module", [condnum.RIll, condnum.RWell])
@pytest.mark.parametrize("shape", [(9, 5), (4, 7)])  # N >= d and N < d (N x N Gram)
def test_modules_equal_functional_and_gradcheck_from_features(module, shape, device):
    Z = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    Z = Z.to(device)
    fn = F.r_ill if module is condnum.RIll else F.r_well
    rule = {"rtol": 1e-10} if module is condnum.RIll else {}
    gram = Z.T @ Z if shape[0] >= shape[1] else Z @ Z.T  # N < d: the N nonzero eigenvalues
    expected = fn(gram, **rule, **EXACT)
    m = module(**rule, **EXACT).to(device)
    torch.testing.assert_close(m(Z), expected, rtol=1e-9, atol=0)
    assert torch.autograd.gradcheck(m, (Z.clone().requires_grad_(),))


def test_gradcheck_from_theta_and_K(device):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 6, dtype=torch.float64, generator=g)
    theta = torch.randn(6, 4, dtype=torch.float64, generator=g).to(device).requires_grad_()
    K = (X.T @ X).to(device).requires_grad_()

    def loss(theta, K):
        S = F.covariance(theta, (K + K.T) / 2)
        return F.r_ill(S, **EXACT) + F.r_well(S, **EXACT)

    assert torch.autograd.gradcheck(loss, (theta, K))


def test_modules_keep_warm_start_buffers():
    m = condnum.RIll()
    Z = torch.randn(64, 16, dtype=torch.float64)
    first = m(Z)
    assert m.u_min.shape == (16,) and m.u_max.shape == (16,)
    u = m.u_min.clone()
    second = m(Z)
    torch.testing.assert_close(first, second, rtol=1e-9, atol=0)
    assert abs(abs(m.u_min @ u) - 1) < 1e-6
    assert "u_min" in m.state_dict()


def _kappa(S):
    return reference.condition_number(S.double(), rtol=0.0).item()


@settings(max_examples=25, deadline=None)
@given(d=st.integers(3, 40), log_kappa=st.floats(0.5, 4), seed=st.integers(0, 2**31))
def test_gradient_steps_move_kappa_as_the_paper_proves(d, log_kappa, seed):
    """One small step on R_ill increases kappa; on R_well it decreases kappa."""
    S = _spd(d, 10**log_kappa, seed)
    for fn, direction in ((F.r_ill, 1), (F.r_well, -1)):
        A = S.clone().requires_grad_()
        value = fn(A, rtol=0.0, **EXACT) if fn is F.r_ill else fn(A, **EXACT)
        (grad,) = torch.autograd.grad(value, A)
        eta = 1e-3 / grad.norm().item() * S.norm().item()  # a step of 0.1% of ||S||
        stepped = S - eta * grad
        assert direction * (_kappa(stepped) - _kappa(S)) > 0


def test_torch_compile_fullgraph_forward_backward():
    r_ill, r_well = condnum.RIll(), condnum.RWell()
    # features with well-separated extreme singular values, so u_min/u_max are well defined
    U, _ = torch.linalg.qr(torch.randn(256, 32, dtype=torch.float64))
    sv = torch.logspace(0, -2, 32, dtype=torch.float64)
    Z = ((U * sv) @ torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64))[0]).float()
    r_ill(Z), r_well(Z)  # size the warm-start buffers eagerly

    def step(Z):
        return r_ill(Z) + r_well(Z)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    Zc = Z.clone().requires_grad_()
    Ze = Z.clone().requires_grad_()
    compiled(Zc).backward()
    step(Ze).backward()
    torch.testing.assert_close(Zc.grad, Ze.grad, rtol=1e-4, atol=1e-6)

    fn = torch.compile(lambda S: F.r_ill(S) + F.r_well(S), fullgraph=True, backend="aot_eager")
    S = F.gram(Z)
    torch.testing.assert_close(fn(S), F.r_ill(S) + F.r_well(S))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype, device):
    S = _spd(10, 20.0, 1, dtype).to(device).requires_grad_()
    lam_min, lam_max, u_min, u_max = F.extreme_eigh(S.detach(), rtol=0.0)
    torch.library.opcheck(ops.r_ill.default, (S, lam_min, u_min, 10))
    torch.library.opcheck(ops.r_well.default, (S, lam_max, u_max, 8))
    g = torch.tensor(0.5, dtype=dtype, device=device)
    r = ops.r_ill(S.detach(), lam_min, u_min, 10)
    torch.library.opcheck(ops._r_ill_backward.default, (g, S.detach(), r, lam_min, u_min, 10))
    torch.library.opcheck(ops._r_well_backward.default, (g, S.detach(), lam_max, u_max, 10))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: F.r_ill(torch.eye(3) + 1, k=0), "k must be positive, got 0"),
        (lambda: F.r_well(torch.eye(3) + 1, k=-2), "k must be positive, got -2"),
        (lambda: F.r_ill(torch.randn(3)), "r_ill: S must be a 2-D matrix"),
        (lambda: F.r_well(torch.randn(2, 3)), "r_well: S must be square"),
        (lambda: F.r_well(torch.eye(2, dtype=torch.int64)), "S must be float32 or float64"),
        (lambda: F.r_ill(torch.empty(0, 0)), "S must not be empty"),
        (lambda: F.r_ill(torch.full((2, 2), float("inf"))), "S contains NaN or Inf"),
        (lambda: condnum.RIll()(torch.randn(5)), "expected a 2-D input"),
        (lambda: condnum.RIll(k=0), "k must be positive"),
        (lambda: condnum.RWell(input="hessian"), "input must be 'features' or 'gram'"),
        (
            lambda: ops.r_ill(torch.eye(2), torch.tensor(1.0).double(), torch.ones(2), 2),
            "S and lam_min must have the same dtype",
        ),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_values_beyond_float32_range_are_inf_not_errors():
    S = torch.diag(torch.tensor([1e30, 1.0]))  # lam_max^2 / 2 overflows float32
    assert F.r_well(S).item() == float("inf")
