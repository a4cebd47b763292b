"""gram(Z) = Z^T Z and covariance(theta, K) = theta^T K theta, on each (device, backend) of
conftest.IMPLEMENTATIONS (tests without ``device`` on the CPU implementations only)."""

import math

import pytest
import torch
from conftest import BASELINE_MULTIPLE, HAS_FP32_PRECISION, fp32_matmul_precision, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

import condnum
from condnum import functional as F

ops = torch.ops.condnum
pytestmark = pytest.mark.usefixtures("impl")


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 300),
    d=st.integers(1, 300),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31),
)
def test_gram_matches_float64_matmul_and_is_exactly_symmetric(n, d, dtype, seed, device):
    Z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    S = F.gram(Z.to(device))
    assert S.device == Z.to(device).device
    S = S.cpu()
    ref = Z.double().T @ Z.double()
    torch_err = ((Z.T @ Z).double() - ref).abs().max()
    assert S.dtype == dtype and S.shape == (d, d)
    assert torch.equal(S, S.T)
    # no worse than a plain matmul in the same dtype (blocking changes summation order); in
    # float64 that matmul is the reference itself, so at least the rounding of another
    # order: about eps sqrt(n) of the largest entry
    rounding = torch.finfo(dtype).eps * math.sqrt(n) * ref.abs().max()
    assert (S.double() - ref).abs().max() <= BASELINE_MULTIPLE * max(torch_err, rounding)


#: torch settings under which a float32 matmul may run in TF32 or bfloat16: the global one,
#: and torch >= 2.9's per-backend ones ("{backend}" is the device's: cuda, else mkldnn).
REDUCED_FP32 = [
    ("legacy", "high"),
    ("legacy", "medium"),
    ("{backend}.matmul.fp32_precision", "tf32"),
    ("{backend}.matmul.fp32_precision", "bf16"),
    ("fp32_precision", "tf32"),
]


@pytest.mark.parametrize(("setting", "value"), REDUCED_FP32)
def test_gram_keeps_float32_accuracy_when_torch_may_use_tf32(setting, value, impl, device):
    """Under each setting that lets torch run float32 matmuls in TF32 or bfloat16 (on GPUs
    with tensor cores, CPUs with bfloat16 units), S keeps float32 accuracy (TF32's 10-bit
    mantissa would move it by ~1e-3): gram and covariance form float32 products in float64
    and round once, which gives exactly the float64 product's rounding (the native CUDA
    kernel never uses TF32 and rounds its own float32 sums), and the eigen-solve runs. The
    per-backend settings used to make the portable path raise."""
    backend = "cuda" if device.type == "cuda" else "mkldnn"
    if setting != "legacy" and not HAS_FP32_PRECISION:
        pytest.skip("torch < 2.9 has no per-backend fp32_precision settings")
    if (backend, value) == ("cuda", "bf16"):
        pytest.skip("torch has no bfloat16 setting for cuBLAS")
    g = torch.Generator().manual_seed(3)
    Z = torch.randn(512, 96, generator=g, dtype=torch.float32)
    theta = torch.randn(40, 24, generator=g, dtype=torch.float32)
    K = torch.randn(40, 40, generator=g, dtype=torch.float32)
    K = K @ K.T
    K = (K + K.T) / 2  # exactly symmetric: its symmetrisation is exact in either dtype
    with fp32_matmul_precision(setting.format(backend=backend), value):
        S = F.gram(Z.to(device))
        C = F.covariance(theta.to(device), K.to(device))
        lam_max, _ = F.top_eigh(S)
        S64 = F.gram(Z.double().to(device)).float()
        C64 = F.covariance(theta.double().to(device), K.double().to(device)).float()
    ref = Z.double().T @ Z.double()
    bound = 4 * torch.finfo(torch.float32).eps * math.sqrt(512) * (Z.abs().T @ Z.abs()).double()
    assert ((S.cpu().double() - ref).abs() <= bound).all()
    assert rel_err(lam_max.item(), torch.linalg.eigvalsh(ref)[-1].item()) <= 1e-4
    if not (impl.device == "cuda" and impl.backend == "native"):
        assert torch.equal(S, S64) and torch.equal(C, C64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gram_half_inputs_accumulate_in_float32(dtype, device):
    Z = torch.randn(2048, 64).to(dtype)
    S = F.gram(Z.to(device)).cpu()
    assert S.dtype == torch.float32
    ref = Z.double().T @ Z.double()
    # float32 accumulation: no worse than a float32 matmul of the same (exactly widened) inputs
    Z32 = Z.float()
    torch_err = ((Z32.T @ Z32).double() - ref).abs().max()
    assert (S.double() - ref).abs().max() <= BASELINE_MULTIPLE * torch_err


def test_covariance_matches_reference(device):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 30, generator=g, dtype=torch.float64)
    K = (X.T @ X).to(device)
    theta = torch.randn(30, 12, generator=g, dtype=torch.float64).to(device)
    S = F.covariance(theta, K)
    torch.testing.assert_close(S, theta.T @ K @ theta, rtol=1e-12, atol=1e-10)
    assert torch.equal(S, S.T)


def test_gram_gradcheck(device):
    Z = torch.randn(7, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(F.gram, (Z,))
    assert torch.autograd.gradgradcheck(F.gram, (Z,))


def test_covariance_gradcheck(device):
    theta = torch.randn(6, 4, dtype=torch.float64, device=device, requires_grad=True)
    A = torch.randn(6, 6, dtype=torch.float64, device=device, requires_grad=True)
    # covariance requires a symmetric K: check through K = A + A^T
    assert torch.autograd.gradcheck(lambda t, a: F.covariance(t, a + a.T), (theta, A))


def test_covariance_gradgradcheck(device):
    theta = torch.randn(6, 4, dtype=torch.float64, device=device, requires_grad=True)
    A = torch.randn(6, 6, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t, a: F.covariance(t, a + a.T), (theta, A))


def test_inputs_modified_in_place_before_backward_raise(device):
    """As torch's own ops do: the backward would otherwise read the new values."""
    Z = torch.randn(7, 5, dtype=torch.float64, device=device, requires_grad=True)
    K = torch.eye(7, dtype=torch.float64, device=device)
    for S, modified in ((F.gram(Z), Z), (F.covariance(Z, K), K)):
        with torch.no_grad():
            modified.mul_(2)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            S.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype, device):
    Z = torch.randn(9, 4, dtype=dtype, device=device, requires_grad=True)
    torch.library.opcheck(ops.gram.default, (Z,))
    X = torch.randn(8, 5, dtype=dtype, device=device)
    theta = torch.randn(5, 3, dtype=dtype, device=device, requires_grad=True)
    torch.library.opcheck(ops.covariance.default, (theta, X.T @ X))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.randn(5),), "Z must be a 2-D matrix, got a 1-D"),
        ((torch.randn(0, 3),), "Z must not be empty"),
        ((torch.ones(3, 3, dtype=torch.int64),), "Z must be float16, bfloat16, float32 or float64"),
    ],
)
def test_gram_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        F.gram(*args)


def test_covariance_bad_input():
    K = torch.eye(4)
    with pytest.raises(ValueError, match="K must be \\(D, D\\)"):
        F.covariance(torch.randn(3, 2), K)
    with pytest.raises(ValueError, match="K must be symmetric"):
        F.covariance(torch.randn(4, 2), torch.randn(4, 4) + 10 * torch.eye(4).flip(0).triu())
    with pytest.raises(ValueError, match="same dtype"):
        F.covariance(torch.randn(4, 2, dtype=torch.float64), K)
    with pytest.raises(ValueError, match="K contains NaN or Inf"):
        F.covariance(torch.randn(4, 2), torch.full((4, 4), float("nan")))
    assert condnum.built_with_cuda() in (True, False)
