"""What is specific to the native CUDA kernels (``CONDNUM_BACKEND=native`` on CUDA).

The op tests of test_extreme_eigh, test_gram, test_regularizers and test_regressions run on CUDA
for both backends through conftest's (device, backend) parametrization; this file keeps
what only the hand-written kernels do: NaN (+inf for R_ill) instead of value errors,
ignored zero warm starts, their size limit, agreement with the CPU kernels, no host
synchronisation, CUDA-graph capture, and torch.compile with inductor.

Every test takes the ``cuda`` fixture, which skips (visibly, with the reason) when no GPU
is usable or condnum was built without its CUDA kernels, and activates the native
backend; nothing queries CUDA at import time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from conftest import (
    BASELINE_MULTIPLE,
    eig_rtol,
    log_spectrum,
    rel_err,
    spd_from_spectrum,
    summation_rtol,
)

import condnum
from condnum import functional as F

ops = torch.ops.condnum

#: Solver tolerance where two solves (warm vs cold start) must give the same gradient:
#: eigenvector errors ~ tol / relative gap stay far below the comparison's 1e-3.
SOLVER_TOL = 1e-6


@pytest.fixture
def cuda() -> Iterator[torch.device]:
    """The GPU, with the native CUDA kernels active (the default on CUDA is portable)."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    if not condnum.built_with_cuda():
        pytest.skip("condnum was built without its CUDA kernels (CPU torch or CONDNUM_CUDA=OFF)")
    with condnum.backend("native"):
        yield torch.device("cuda")


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


def test_covariance_of_a_non_symmetric_K_is_nan_on_cuda(cuda):
    K = torch.eye(6, dtype=torch.float64, device=cuda)
    K[0, 1] = 0.5
    assert torch.isnan(ops.covariance(torch.ones(6, 2, dtype=torch.float64, device=cuda), K)).all()


# ----------------------------------------------------------------------------- extreme eigenpairs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_warm_starts_are_ignored_on_cuda(cuda, dtype):
    """The CPU raises for a zero warm start; checking its norm on CUDA needs a host sync."""
    S = _spd(200, 1e4, 3, dtype, cuda)
    tol = F.DEFAULT_TOL[dtype]
    cold = ops.extreme_eigh(S, 128, 1e-6, tol, None, None)
    zero = torch.zeros(200, dtype=dtype, device=cuda)
    again = ops.extreme_eigh(S, 128, 1e-6, tol, zero, zero)
    for a, b in zip(cold[:2], again[:2], strict=True):
        assert rel_err(b.item(), a.item()) <= 2 * eig_rtol(S, 1e-6)  # each within one


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


def test_device_and_size_errors_name_the_problem(cuda):
    """What only the CUDA kernels check (the shared argument errors run in test_extreme_eigh)."""
    S = torch.eye(3, device=cuda) + 0.1
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
    # the same formula on the same (lam, u), summed in another order
    r_cpu, r_cuda = ops.r_ill(*args_ill), ops.r_ill(*to)
    ill_tol = BASELINE_MULTIPLE * summation_rtol("r_ill", S, k, 1e-6)
    assert rel_err(r_cuda.item(), r_cpu.item()) <= ill_tol
    w_cpu, w_cuda = ops.r_well(*args_well), ops.r_well(*tw)
    well_tol = BASELINE_MULTIPLE * summation_rtol("r_well", S, k)
    assert rel_err(w_cuda.item(), w_cpu.item()) <= well_tol
    g = torch.tensor(0.7, dtype=dtype)
    gi_cpu = ops._r_ill_backward(g, S, r_cpu, lam_min, u_min, k)
    gi_cuda = ops._r_ill_backward(g.to(cuda), to[0], r_cuda, to[1], to[2], k)
    # elementwise a u_i u_j + c S_ij may cancel: compare against the largest entry; the
    # gradient holds R^2 for R_ill, twice R's relative error
    scale = gi_cpu.abs().max().item()
    torch.testing.assert_close(gi_cuda.cpu(), gi_cpu, rtol=0, atol=2 * ill_tol * scale)
    gw_cpu = ops._r_well_backward(g, S, lam_max, u_max, k)
    gw_cuda = ops._r_well_backward(g.to(cuda), tw[0], tw[1], tw[2], k)
    scale = gw_cpu.abs().max().item()
    torch.testing.assert_close(gw_cuda.cpu(), gw_cpu, rtol=0, atol=2 * well_tol * scale)


# ----------------------------------------------------------------------------- torch integration


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
