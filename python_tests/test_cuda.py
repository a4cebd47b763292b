"""The CUDA kernels of every condnum op, against the CPU kernels and float64 references.

Every test takes the ``cuda`` fixture, which skips (visibly, with the reason) when no GPU
is usable or condnum was built without its CUDA kernels; nothing queries CUDA at import
time. Beyond values: opcheck on CUDA tensors, gradcheck (float64) through the Gram,
torch.compile(fullgraph=True) forward + backward, the absence of host synchronisation,
and CUDA-graph capture of an RIll + RWell training step with its warm-start buffers.

CUDA-specific behaviour (csrc/cuda/kernels.h): value-dependent errors that the CPU raises
(NaN/Inf or non-symmetric S, indefinite S, R_ill = +inf) cannot be raised without a host
synchronisation, so the CUDA outputs are NaN (+inf for R_ill) instead.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    EIG_RTOL,
    VALUE_RTOL,
    log_spectrum,
    reference_extremes,
    rel_err,
    spd_from_spectrum,
)

import condnum
from condnum import functional as F

ops = torch.ops.condnum

#: gram/covariance: error against float64 at most this multiple of a plain matmul's in
#: the same dtype (blocking and split-K change the summation order, not its accuracy).
MATMUL_ERROR_MULTIPLE = 4.0
#: float32 accumulation of half-precision inputs: relative error far below half precision.
HALF_INPUT_RTOL = 1e-5
#: CUDA vs CPU kernels on the same (lam, u): the same formula, different summation order.
SAME_FORMULA_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}
#: Solver tolerance where two solves (warm vs cold start) must give the same gradient:
#: eigenvector errors ~ tol / relative gap stay far below the comparison's 1e-3.
SOLVER_TOL = 1e-6
#: kappa ranges: float64 to 1e6 (the design bar), float32 to 1e4 (d eps32 kappa < 1).
KAPPAS = {torch.float64: [1e1, 1e3, 1e6], torch.float32: [1e1, 1e3, 1e4]}


@pytest.fixture
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    if not condnum.built_with_cuda():
        pytest.skip("condnum was built without its CUDA kernels (CPU torch or CONDNUM_CUDA=OFF)")
    return torch.device("cuda")


def _features(
    n: int, d: int, kappa_sv: float, seed: int, dtype: torch.dtype, device
) -> torch.Tensor:
    """Z = U diag(sv) Q^T (rank min(n, d)), log-spaced sv: well-separated extremes."""
    g = torch.Generator().manual_seed(seed)
    r = min(n, d)
    U, _ = torch.linalg.qr(torch.randn(n, r, dtype=torch.float64, generator=g))
    Q, _ = torch.linalg.qr(torch.randn(d, r, dtype=torch.float64, generator=g))
    sv = torch.logspace(0, -math.log10(kappa_sv), r, dtype=torch.float64)
    return ((U * sv) @ Q.T).to(device=device, dtype=dtype)


def _spd(d, kappa, seed, dtype, device):
    return spd_from_spectrum(log_spectrum(d, kappa, seed), seed, dtype).to(device)


# ----------------------------------------------------------------------------- gram, covariance


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("n", "d"), [(1, 1), (7, 5), (64, 33), (300, 129), (4096, 256), (100, 300), (2000, 700)]
)
def test_gram_matches_float64_and_cpu(cuda, n, d, dtype):
    Z = torch.randn(n, d, dtype=dtype, generator=torch.Generator().manual_seed(n + d))
    S = ops.gram(Z.to(cuda))
    assert S.dtype == dtype and S.shape == (d, d) and S.device.type == cuda.type
    assert torch.equal(S, S.T)  # only one triangle is computed, then mirrored
    ref = Z.double().T @ Z.double()
    matmul_err = ((Z.T @ Z).double() - ref).abs().max().item()
    assert (S.double().cpu() - ref).abs().max().item() <= MATMUL_ERROR_MULTIPLE * matmul_err + 1e-12
    torch.testing.assert_close(
        S.cpu(), ops.gram(Z), rtol=0, atol=2 * MATMUL_ERROR_MULTIPLE * matmul_err + 1e-12
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("n", "d"), [(2048, 64), (333, 130)])
def test_gram_half_inputs_accumulate_in_float32(cuda, dtype, n, d):
    Z = torch.randn(n, d, generator=torch.Generator().manual_seed(d)).to(dtype)
    S = ops.gram(Z.to(cuda))
    assert S.dtype == torch.float32 and torch.equal(S, S.T)
    ref = Z.double().T @ Z.double()
    assert ((S.double().cpu() - ref).abs().max() / ref.abs().max()).item() < HALF_INPUT_RTOL


def test_gram_of_a_transposed_view(cuda):
    Z = torch.randn(40, 90, dtype=torch.float64, device=cuda)
    torch.testing.assert_close(ops.gram(Z.mT), Z @ Z.mT, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("D", "d"), [(30, 12), (300, 64), (129, 200)])
def test_covariance_matches_float64_and_cpu(cuda, dtype, D, d):
    g = torch.Generator().manual_seed(D)
    X = torch.randn(D + 20, D, dtype=torch.float64, generator=g)
    K = (X.T @ X).to(dtype)
    theta = torch.randn(D, d, dtype=dtype, generator=g)
    S = ops.covariance(theta.to(cuda), K.to(cuda))
    assert torch.equal(S, S.T)
    ref = theta.double().T @ K.double() @ theta.double()
    # baseline: a plain product in the same dtype, or (float64, where that is the reference
    # itself) the standard bound D eps |theta|^T |K| |theta|
    plain_err = ((theta.T @ K @ theta).double() - ref).abs().max().item()
    a = theta.double().abs()
    bound = D * torch.finfo(dtype).eps * (a.T @ K.double().abs() @ a).max().item()
    assert (S.double().cpu() - ref).abs().max().item() <= MATMUL_ERROR_MULTIPLE * max(
        plain_err, bound
    )


def test_covariance_of_a_non_symmetric_K_is_nan_on_cuda(cuda):
    K = torch.eye(6, dtype=torch.float64, device=cuda)
    K[0, 1] = 0.5
    assert torch.isnan(ops.covariance(torch.ones(6, 2, dtype=torch.float64, device=cuda), K)).all()


# ----------------------------------------------------------------------------- extreme eigenpairs


def _check_pairs(S, result, rtol, tol):
    lam_min, lam_max, u_min, u_max, err = result
    ref_min, ref_max = reference_extremes(S.cpu(), rtol)
    assert rel_err(lam_max.item(), ref_max) <= tol
    assert rel_err(lam_min.item(), ref_min) <= tol
    assert err.dtype == torch.float64 and err.shape == () and 0 <= err.item() <= tol
    S64 = S.double()
    for lam, u in ((lam_min, u_min), (lam_max, u_max)):
        assert u.shape == (S.shape[0],) and u.dtype == S.dtype and u.device == S.device
        assert abs(u.norm().item() - 1) < 1e-4
        assert u[u.abs().argmax()] > 0  # sign convention
        residual = (S64 @ u.double() - lam.double() * u.double()).norm().item()
        assert residual <= math.sqrt(tol) * ref_max


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [16, 100, 256, 768])
@pytest.mark.parametrize("kappa_index", [0, 1, 2])
def test_extreme_eigh_matches_float64_and_cpu(cuda, dtype, d, kappa_index):
    kappa = KAPPAS[dtype][kappa_index]
    S = _spd(d, kappa, d + kappa_index, dtype, cuda)
    rtol = 0.1 / kappa
    tol = F.DEFAULT_TOL[dtype]
    result = ops.extreme_eigh(S, F.DEFAULT_NUM_ITERS, rtol, tol, None, None)
    _check_pairs(S, result, rtol, EIG_RTOL[dtype])
    cpu = ops.extreme_eigh(S.cpu(), F.DEFAULT_NUM_ITERS, rtol, tol, None, None)
    for a, b in zip(result[:2], cpu[:2], strict=True):
        assert rel_err(a.item(), b.item()) <= 2 * EIG_RTOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_eigh_rank_deficient_features(cuda, dtype):
    Z = _features(64, 200, 10.0, 0, dtype, cuda)  # S = Z^T Z: rank 64 of 200
    S = ops.gram(Z)
    rtol = 1e-4
    result = ops.extreme_eigh(S, F.DEFAULT_NUM_ITERS, rtol, F.DEFAULT_TOL[dtype], None, None)
    ref_min, ref_max = reference_extremes(S.cpu(), rtol)
    assert rel_err(result[0].item(), ref_min) <= EIG_RTOL[dtype]
    assert rel_err(result[1].item(), ref_max) <= EIG_RTOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_warm_start_converges_to_the_same_pairs(cuda, dtype):
    S = _spd(200, 1e4, 3, dtype, cuda)
    tol = F.DEFAULT_TOL[dtype]
    cold = ops.extreme_eigh(S, 128, 1e-6, tol, None, None)
    noise = 1e-3 * torch.randn(200, dtype=dtype, generator=torch.Generator().manual_seed(1)).to(
        cuda
    )
    warm = ops.extreme_eigh(S, 128, 1e-6, tol, cold[2] + noise, cold[3] - noise)
    for a, b in zip(cold[:2], warm[:2], strict=True):
        assert rel_err(a.item(), b.item()) <= EIG_RTOL[dtype]
    # zero warm starts are ignored on CUDA (the CPU raises: checking needs a host sync)
    zero = torch.zeros(200, dtype=dtype, device=cuda)
    again = ops.extreme_eigh(S, 128, 1e-6, tol, zero, zero)
    assert rel_err(again[0].item(), cold[0].item()) <= EIG_RTOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_eigh_matches_extreme_eigh(cuda, dtype):
    S = _spd(300, 1e3, 5, dtype, cuda)
    lam, u, err = ops.top_eigh(S, 128, F.DEFAULT_TOL[dtype], None)
    _, ref = reference_extremes(S.cpu(), 0.0)
    assert rel_err(lam.item(), ref) <= EIG_RTOL[dtype] and err.item() <= EIG_RTOL[dtype]
    u_max = ops.extreme_eigh(S, 128, 1e-6, F.DEFAULT_TOL[dtype], None, None)[3]
    assert abs(abs(u.double() @ u_max.double()).item() - 1) < 1e-4


def test_extreme_eigh_special_matrices(cuda):
    zero = ops.extreme_eigh(torch.zeros(20, 20, device=cuda), 128, 1e-6, 1e-4, None, None)
    assert zero[0].item() == 0 and zero[1].item() == 0 and torch.equal(zero[2], zero[3])
    one = ops.extreme_eigh(
        torch.full((1, 1), 3.0, device=cuda, dtype=torch.float64), 8, 0.0, 1e-7, None, None
    )
    assert one[0].item() == 3.0 and one[1].item() == 3.0 and one[2].item() == 1.0
    ident = ops.extreme_eigh(torch.eye(50, device=cuda), 128, 1e-6, 1e-4, None, None)
    assert ident[0].item() == pytest.approx(1.0) and ident[1].item() == pytest.approx(1.0)
    assert torch.isfinite(ident[2]).all() and torch.isfinite(ident[3]).all()


def test_invalid_matrices_give_nan_on_cuda(cuda):
    S = _spd(20, 10.0, 4, torch.float64, cuda)
    bad = S.clone()
    bad[3, 4] = float("nan")
    assert all(torch.isnan(t).all() for t in ops.extreme_eigh(bad, 64, 1e-6, 1e-7, None, None))
    asym = S.clone()
    asym[3, 4] += 0.1
    assert torch.isnan(ops.extreme_eigh(asym, 64, 1e-6, 1e-7, None, None)[1])
    indefinite = spd_from_spectrum(torch.linspace(-1, 1, 20), 5, torch.float64).to(cuda)
    lam_min, lam_max, u_min, _, _ = ops.extreme_eigh(indefinite, 64, 1e-6, 1e-7, None, None)
    assert (
        torch.isnan(lam_min) and torch.isnan(u_min).all() and lam_max.item() == pytest.approx(1.0)
    )


def test_argument_errors_name_the_problem(cuda):
    S = torch.eye(3, device=cuda) + 0.1
    with pytest.raises(ValueError, match="num_iters must be >= 1, got 0"):
        ops.extreme_eigh(S, 0, 1e-6, 1e-4, None, None)
    with pytest.raises(ValueError, match="v0_min must have shape \\(3,\\)"):
        ops.extreme_eigh(S, 8, 1e-6, 1e-4, torch.ones(4, device=cuda), None)
    with pytest.raises(ValueError, match="same device"):
        ops.extreme_eigh(S, 8, 1e-6, 1e-4, None, torch.ones(3))
    with pytest.raises(ValueError, match="S and lam_min must be on the same device"):
        ops.r_ill(S, torch.tensor(1.0), torch.ones(3, device=cuda), 3)
    big = torch.eye(1100, device=cuda)
    with pytest.raises(ValueError, match="exceed the CUDA kernels' limit"):
        ops.top_eigh(big, 2000, 1e-4, None)


# ----------------------------------------------------------------------------- regularizers


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k_offset", [0, 3])
def test_regularizers_match_cpu_kernels(cuda, dtype, k_offset):
    S = _spd(40, 100.0, 7, dtype, torch.device("cpu"))
    k = 40 - k_offset
    lam_min, lam_max, u_min, u_max, _ = ops.extreme_eigh(
        S, 64, 1e-6, F.DEFAULT_TOL[dtype], None, None
    )
    args_ill = (S, lam_min, u_min, k)
    args_well = (S, lam_max, u_max, k)
    to = [t.to(cuda) if isinstance(t, torch.Tensor) else t for t in args_ill]
    tw = [t.to(cuda) if isinstance(t, torch.Tensor) else t for t in args_well]
    r_cpu, r_cuda = ops.r_ill(*args_ill), ops.r_ill(*to)
    assert rel_err(r_cuda.item(), r_cpu.item()) <= SAME_FORMULA_RTOL[dtype]
    w_cpu, w_cuda = ops.r_well(*args_well), ops.r_well(*tw)
    assert abs(w_cuda.item() - w_cpu.item()) <= VALUE_RTOL[dtype] * abs(lam_max.item()) ** 2
    g = torch.tensor(0.7, dtype=dtype)
    gi_cpu = ops._r_ill_backward(g, S, r_cpu, lam_min, u_min, k)
    gi_cuda = ops._r_ill_backward(g.to(cuda), to[0], r_cuda, to[1], to[2], k)
    # elementwise a u_i u_j + c S_ij may cancel: compare against the largest entry
    scale = gi_cpu.abs().max().item()
    torch.testing.assert_close(gi_cuda.cpu(), gi_cpu, rtol=0, atol=SAME_FORMULA_RTOL[dtype] * scale)
    gw_cpu = ops._r_well_backward(g, S, lam_max, u_max, k)
    gw_cuda = ops._r_well_backward(g.to(cuda), tw[0], tw[1], tw[2], k)
    scale = gw_cpu.abs().max().item()
    torch.testing.assert_close(gw_cuda.cpu(), gw_cpu, rtol=0, atol=SAME_FORMULA_RTOL[dtype] * scale)


def test_r_ill_at_kappa_one_is_inf_on_cuda(cuda):
    S = 3.0 * torch.eye(5, dtype=torch.float64, device=cuda)
    lam = torch.tensor(3.0, dtype=torch.float64, device=cuda)
    u = torch.ones(5, dtype=torch.float64, device=cuda) / math.sqrt(5)
    assert ops.r_ill(S, lam, u, 5).item() == math.inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_functional_values_match_reference(cuda, dtype):
    S = _spd(64, 1e3, 2, dtype, cuda)
    rtol = 1e-4
    S64 = S.double().cpu()
    assert (
        rel_err(F.r_ill(S, rtol=rtol).item(), condnum.reference.r_ill(S64, 64, rtol).item())
        <= VALUE_RTOL[dtype]
    )
    ref_well = condnum.reference.r_well(S64, 64).item()
    assert rel_err(F.r_well(S).item(), ref_well) <= VALUE_RTOL[dtype] * max(
        1.0, abs(ref_well) ** -1
    )


# ----------------------------------------------------------------------------- torch integration


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_on_cuda(cuda, dtype):
    Z = torch.randn(9, 4, dtype=dtype, device=cuda, requires_grad=True)
    torch.library.opcheck(ops.gram.default, (Z,))
    X = torch.randn(8, 5, dtype=dtype, device=cuda)
    theta = torch.randn(5, 3, dtype=dtype, device=cuda, requires_grad=True)
    torch.library.opcheck(ops.covariance.default, (theta, X.T @ X))
    S = _spd(12, 100.0, 0, dtype, cuda).requires_grad_()
    torch.library.opcheck(ops.extreme_eigh.default, (S, 32, 1e-6, 1e-6, None, None))
    torch.library.opcheck(ops.top_eigh.default, (S, 32, 1e-6, None))
    lam_min, lam_max, u_min, u_max, _ = ops.extreme_eigh(S.detach(), 32, 0.0, 1e-6, None, None)
    torch.library.opcheck(ops.r_ill.default, (S, lam_min, u_min, 12))
    torch.library.opcheck(ops.r_well.default, (S, lam_max, u_max, 10))
    g = torch.tensor(0.5, dtype=dtype, device=cuda)
    r = ops.r_ill(S.detach(), lam_min, u_min, 12)
    torch.library.opcheck(ops._r_ill_backward.default, (g, S.detach(), r, lam_min, u_min, 12))
    torch.library.opcheck(ops._r_well_backward.default, (g, S.detach(), lam_max, u_max, 12))


def test_gradcheck_through_the_gram_on_cuda(cuda):
    Z = _features(12, 5, 4.0, 1, torch.float64, cuda).requires_grad_()
    exact = {"tol": 1e-13}

    def loss(Z):
        S = F.gram(Z)
        return F.r_ill(S, rtol=0.0, **exact) + F.r_well(S, **exact)

    assert torch.autograd.gradcheck(loss, (Z,))
    for module in (condnum.RIll(rtol=1e-10, **exact), condnum.RWell(**exact)):
        assert torch.autograd.gradcheck(module, (Z.detach().clone().requires_grad_(),))


# inductor's own warnings (TF32 hints, deprecations inside torch) are not ours
INDUCTOR_WARNINGS = [
    pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*TensorFloat32.*:UserWarning"),
]


@pytest.mark.parametrize(
    "backend", ["aot_eager", pytest.param("inductor", marks=INDUCTOR_WARNINGS)]
)
def test_torch_compile_fullgraph_forward_backward_on_cuda(cuda, backend):
    r_ill, r_well = condnum.RIll(tol=SOLVER_TOL).to(cuda), condnum.RWell(tol=SOLVER_TOL).to(cuda)
    Z = _features(256, 32, 10.0, 2, torch.float32, cuda)
    r_ill(Z), r_well(Z)  # size the warm-start buffers eagerly

    def step(Z):
        return r_ill(Z) + r_well(Z)

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    Zc = Z.clone().requires_grad_()
    Ze = Z.clone().requires_grad_()
    compiled(Zc).backward()
    step(Ze).backward()
    torch.testing.assert_close(Zc.grad, Ze.grad, rtol=1e-4, atol=1e-6)


def test_ops_do_not_synchronise_the_host(cuda):
    Z = _features(128, 48, 10.0, 3, torch.float32, cuda).requires_grad_()
    r_ill, r_well = condnum.RIll().to(cuda), condnum.RWell().to(cuda)
    r_ill(Z.detach()), r_well(Z.detach())  # first calls size the buffers
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        (r_ill(Z) + r_well(Z)).backward()
        ops.covariance(Z.detach().T.contiguous(), torch.eye(48, device=cuda))
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert torch.isfinite(Z.grad).all()


def test_cuda_graph_captures_a_training_step_with_warm_starts(cuda):
    r_ill, r_well = condnum.RIll(tol=SOLVER_TOL).to(cuda), condnum.RWell(tol=SOLVER_TOL).to(cuda)
    static_Z = _features(512, 64, 10.0, 4, torch.float32, cuda).requires_grad_()
    # Warm up on a side stream (autograd state, the warm-start buffers' shapes).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            static_Z.grad = None
            (r_ill(static_Z) + r_well(static_Z)).backward()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    static_Z.grad = None
    with torch.cuda.graph(graph):
        static_loss = r_ill(static_Z) + r_well(static_Z)
        static_loss.backward()

    for seed in (5, 6):
        Z = _features(512, 64, 10.0, seed, torch.float32, cuda)
        with torch.no_grad():
            static_Z.copy_(Z)
        graph.replay()
        torch.cuda.synchronize()
        # The buffers were updated by the replay (they warm-start the next one) ...
        assert torch.isfinite(r_ill.u_min).all() and torch.isfinite(r_well.u_max).all()
        # ... and the step equals an eager one from a cold start.
        Ze = Z.clone().requires_grad_()
        loss = condnum.RIll(tol=SOLVER_TOL).to(cuda)(Ze) + condnum.RWell(tol=SOLVER_TOL).to(cuda)(
            Ze
        )
        loss.backward()
        torch.testing.assert_close(static_loss, loss, rtol=1e-3, atol=0)
        scale = Ze.grad.abs().max().item()
        torch.testing.assert_close(static_Z.grad, Ze.grad, rtol=1e-3, atol=1e-3 * scale)
