"""The CPU solvers' product S v and Gram-Schmidt pass: condnum's own kernels
(``torch.ops.condnum._matvec``, ``_symmetric_matvec``, ``_gram_schmidt_pass``) against a
float64 reference, which kernels the solvers pick (``CONDNUM_MATVEC``, else own for MKL on an
AMD CPU: the product, the Gram-Schmidt pass and the shift-and-invert solve of
test_cholesky_solve.py), and the native solvers under both, whichever the machine would
pick."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import log_spectrum, spd_from_spectrum
from hypothesis import given
from hypothesis import strategies as st

import condnum
from condnum import functional as F
from condnum.defaults import DEFAULT_TOL, dtype_rtol

ops = torch.ops.condnum


@st.composite
def products(draw):
    """(A, x): shapes around the kernels' blocks (8 or 4 rows; 8 float32 or 4 float64
    columns a register; the Gram-Schmidt pass's tiles of 8 registers) and their tails,
    entries spread over `decades` orders of magnitude with mixed signs."""
    rows = draw(st.integers(1, 70))
    cols = draw(
        st.sampled_from([1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 257])
    )
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    decades = draw(st.sampled_from([0.0, 6.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    A = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    A *= 10.0 ** (-decades * torch.rand(rows, cols, generator=g, dtype=torch.float64))
    x = torch.randn(cols, generator=g, dtype=torch.float64)
    return A.to(dtype), x.to(dtype)


@given(products())
def test_own_matvec_is_within_the_dot_product_bound(Ax):
    """|y_i - (A x)_i| <= gamma_n sum_j |A_ij x_j|, n = cols + 8 (the lanes and the
    accumulators add at most 8 more roundings), for any order of summation."""
    A, x = Ax
    y = ops._matvec(A, x)
    assert y.dtype == A.dtype and y.shape == (A.shape[0],)
    A64, x64 = A.double(), x.double()
    n = A.shape[1] + 8
    eps = torch.finfo(A.dtype).eps / 2
    bound = n * eps / (1 - n * eps) * (A64.abs() @ x64.abs())
    assert ((y.double() - A64 @ x64).abs() <= bound).all()


@given(products(), st.integers(0, 2**31 - 1))
def test_paired_matvec_gives_each_vector_the_single_products_bits(Ax, seed):
    """The paired kernel (x: (2, cols)) reads each row once for two vectors; each row of its
    result is bitwise the single product of that vector (the same summation order)."""
    A, x = Ax
    g = torch.Generator().manual_seed(seed)
    x2 = torch.randn(x.shape[0], generator=g, dtype=torch.float64).to(A.dtype)
    y = ops._matvec(A, torch.stack((x, x2)))
    assert y.dtype == A.dtype and y.shape == (2, A.shape[0])
    assert torch.equal(y[0], ops._matvec(A, x)) and torch.equal(y[1], ops._matvec(A, x2))


@given(products())
def test_own_gram_schmidt_pass_is_within_the_rounding_bound(Vw):
    """h = V w is the product kernel's, and each w_c - sum_r h_r V_rc (with that h) is within
    2 gamma_{rows + 1} (|w_c| + sum_r |h_r V_rc|) of the float64 reference: one fused
    multiply-add per row in the kernel, and as much rounding again in the reference when V
    is float64."""
    V, w = Vw
    out, h = ops._gram_schmidt_pass(V, w)
    assert out.dtype == h.dtype == V.dtype and out.shape == w.shape and h.shape == (V.shape[0],)
    assert torch.equal(h, ops._matvec(V, w))
    V64, w64, h64 = V.double(), w.double(), h.double()
    n = V.shape[0] + 1
    eps = torch.finfo(V.dtype).eps / 2
    bound = 2 * n * eps / (1 - n * eps) * (w64.abs() + V64.abs().T @ h64.abs())
    assert ((out.double() - (w64 - V64.T @ h64)).abs() <= bound).all()


@st.composite
def symmetric_products(draw):
    """(S, x, x2): symmetric S of sizes around the triangle kernel's blocks (4 rows; 8 float32
    or 4 float64 columns a register) and chunks (one per 192 rows, up to 16), entries spread
    over `decades` orders of magnitude with mixed signs, and NaN below the diagonal: the
    kernel must not read there."""
    d = draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 12, 17, 33, 64, 65, 191, 192, 385, 401, 777]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    decades = draw(st.sampled_from([0.0, 6.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    A *= 10.0 ** (-decades * torch.rand(d, d, generator=g, dtype=torch.float64))
    S = (A + A.T).to(dtype)
    x = torch.randn(2, d, generator=g, dtype=torch.float64).to(dtype)
    return S, x[0], x[1]


def _nan_below_diagonal(S: torch.Tensor) -> torch.Tensor:
    out = S.clone()
    out[torch.ones_like(S, dtype=torch.bool).tril(-1)] = float("nan")
    return out


@given(symmetric_products())
def test_symmetric_matvec_reads_the_upper_triangle_within_the_dot_product_bound(Sx):
    """S x from S's upper triangle only (NaN below the diagonal changes no bit), each y_i within
    gamma_n sum_j |S_ij x_j|, n = d + 32: a term passes at most d additions along its row or
    its chunk's column buffer, 8 more in the lanes, one per chunk (at most 16) and the final
    one."""
    S, x, _ = Sx
    y = ops._symmetric_matvec(S, x)
    assert y.dtype == S.dtype and y.shape == x.shape
    if _cpu_flags() >= {"avx2", "fma"}:  # else the row kernel serves, reading all of S
        assert torch.equal(ops._symmetric_matvec(_nan_below_diagonal(S), x), y)
    S64, x64 = S.double(), x.double()
    n = S.shape[0] + 32
    eps = torch.finfo(S.dtype).eps / 2
    bound = n * eps / (1 - n * eps) * (S64.abs() @ x64.abs())
    assert ((y.double() - S64 @ x64).abs() <= bound).all()


@given(symmetric_products())
def test_paired_symmetric_matvec_gives_each_vector_the_single_products_bits(Sx):
    S, x, x2 = Sx
    y = ops._symmetric_matvec(S, torch.stack((x, x2)))
    assert y.shape == (2, S.shape[0])
    assert torch.equal(y[0], ops._symmetric_matvec(S, x))
    assert torch.equal(y[1], ops._symmetric_matvec(S, x2))


def test_own_kernels_are_the_same_at_any_thread_count():
    """The row kernel, the Gram-Schmidt pass and the triangle kernel (S of d = 768: four
    chunks, so both threads take two) give the same bits on one thread and on two."""

    def products_of(A, x):
        S = A[:768] + A[:768].T
        return ops._matvec(A, x), *ops._gram_schmidt_pass(A[:128], x), ops._symmetric_matvec(S, x)

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        A = torch.randn(1000, 768, generator=g, dtype=dtype)
        x = torch.randn(768, generator=g, dtype=dtype)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = products_of(A, x)
            torch.set_num_threads(2)
            two = products_of(A, x)
        finally:
            torch.set_num_threads(threads)
        assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_own_kernels_reject_bad_shapes_and_dtypes():
    with pytest.raises(ValueError, match="A must be"):
        ops._matvec(torch.ones(3, 4), torch.ones(3))
    with pytest.raises(ValueError, match="A must be"):
        ops._matvec(torch.ones(3, 4), torch.ones(3, 4))  # three vectors: only pairs
    with pytest.raises(ValueError, match="must both be float32 or both float64"):
        ops._matvec(torch.ones(3, 4), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="S must be"):
        ops._symmetric_matvec(torch.ones(3, 4), torch.ones(4))
    with pytest.raises(ValueError, match="S must be"):
        ops._symmetric_matvec(torch.ones(4, 4), torch.ones(3, 4))
    with pytest.raises(ValueError, match="must both be float32 or both float64"):
        ops._symmetric_matvec(torch.ones(4, 4), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="V must be"):
        ops._gram_schmidt_pass(torch.ones(3, 4), torch.ones(3))
    with pytest.raises(ValueError, match="must both be float32 or both float64"):
        ops._gram_schmidt_pass(torch.ones(3, 4, dtype=torch.float64), torch.ones(4))


def _cpuinfo() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text() if cpuinfo.exists() else ""


def _cpu_flags() -> set[str]:
    found = re.search(r"^flags\s*:(.*)$", _cpuinfo(), re.M)
    return set(found.group(1).split()) if found else set()


def _mkl_on_amd() -> bool:
    """The rule the kernel applies, read independently: torch's BLAS is MKL and the CPU is an
    AMD one with AVX2 and FMA."""
    if not torch.backends.mkl.is_available():
        return False
    return "AuthenticAMD" in _cpuinfo() and {"avx2", "fma"} <= _cpu_flags()


def test_the_choice_follows_the_environment_and_the_cpu(monkeypatch):
    monkeypatch.delenv("CONDNUM_MATVEC", raising=False)
    assert ops._matvec_choice() == ("own" if _mkl_on_amd() else "blas")
    for name in ("own", "blas"):
        monkeypatch.setenv("CONDNUM_MATVEC", name)
        assert ops._matvec_choice() == name
    monkeypatch.setenv("CONDNUM_MATVEC", "mkl")
    S = torch.eye(4)
    with condnum.backend("native"), pytest.raises(ValueError, match="CONDNUM_MATVEC must be"):
        F.top_eigh(S)


CASES = [
    ("geometric", lambda d: torch.logspace(0, -4, d, dtype=torch.float64)),
    ("log-uniform", lambda d: log_spectrum(d, 1e6, seed=3)),
    ("rank-deficient", lambda d: torch.cat([log_spectrum(d - 40, 1e3, seed=4), torch.zeros(40)])),
]


@pytest.mark.parametrize("name,spectrum", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [160, 768])
def test_native_solvers_agree_under_both_kernels(monkeypatch, name, spectrum, dtype, d):
    """extreme_eigh and top_eigh meet tol against float64 eigvalsh under either product, with
    err covering the true error; the two runs agree within their error bounds. The own
    kernels multiply a float64 S of d = 768 (4.5 MiB) by its upper triangle, the others row
    by row."""
    S = spd_from_spectrum(spectrum(d), seed=11, dtype=dtype)
    ev = torch.linalg.eigvalsh(S.double())
    rtol = dtype_rtol(S)
    lam_max = float(ev[-1])
    lam_min = float(ev[ev > rtol * lam_max][0])
    results = {}
    tol = DEFAULT_TOL[dtype]
    with condnum.backend("native"):
        for kernel in ("own", "blas"):
            monkeypatch.setenv("CONDNUM_MATVEC", kernel)
            lo, hi, _, _, err = ops.extreme_eigh(S, 128, rtol, tol, None, None)
            top, _, top_err = ops.top_eigh(S, 128, tol, None)
            e, te = float(err), float(top_err)
            assert e <= tol and te <= tol
            assert abs(float(hi) - lam_max) <= e * lam_max
            assert abs(float(lo) - lam_min) <= e * lam_min
            assert abs(float(top) - lam_max) <= te * lam_max
            results[kernel] = (float(lo), float(hi), e)
    (lo_a, hi_a, e_a), (lo_b, hi_b, e_b) = results["own"], results["blas"]
    assert abs(hi_a - hi_b) <= (e_a + e_b) * lam_max
    assert abs(lo_a - lo_b) <= (e_a + e_b) * lam_min
