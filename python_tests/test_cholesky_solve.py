"""The CPU solvers' own Cholesky solve (``torch.ops.condnum._cholesky_solve``), the operator of
their shift-and-invert runs: (U^T U)^{-1} b for one right-hand side or two in one pass,
against the backward-error bound of two triangular solves, bit for bit between the paired
and the single solve and at any thread count, and never reading below U's diagonal. The
solvers under either kernel are tested in test_matvec.py (``CONDNUM_MATVEC`` picks both)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

ops = torch.ops.condnum


@st.composite
def factors(draw):
    """(U, b): U upper triangular with a positive diagonal, d around the kernel's blocks of 4
    rows and 4 lanes, its panels of 64 rows and their tails; U = D T with T's off-diagonal
    entries of size 1/sqrt(d) (so x stays finite at every d) and D's over `decades` orders of
    magnitude; b (2, d)."""
    d = draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 17, 31, 64, 65, 101, 130, 257]))
    decades = draw(st.sampled_from([0.0, 3.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    T = torch.triu(torch.randn(d, d, generator=g, dtype=torch.float64), 1) / d**0.5
    T.diagonal().copy_(torch.randn(d, generator=g, dtype=torch.float64).abs() + 0.5)
    U = T * 10.0 ** (-decades * torch.rand(d, 1, generator=g, dtype=torch.float64))
    b = torch.randn(2, d, generator=g, dtype=torch.float64)
    return U, b


@given(factors())
def test_cholesky_solve_is_within_the_backward_error_bound(Ub):
    """|b - U^T U x| <= (4 d + 8) eps |U^T| |U| |x| elementwise: two triangular solves, each
    backward stable (|dT| <= gamma_d |T|), plus the rounding of the residual itself."""
    U, b = Ub
    x = ops._cholesky_solve(U, b)
    assert x.shape == b.shape and x.dtype == torch.float64
    d = U.shape[0]
    eps = torch.finfo(torch.float64).eps
    residual = (b - (U.mT @ (U @ x.T)).T).abs()
    bound = (4 * d + 8) * eps * (U.mT.abs() @ (U.abs() @ x.T.abs())).T
    assert (residual <= bound).all()


@given(factors())
def test_paired_cholesky_solve_gives_each_vector_the_single_solves_bits(Ub):
    U, b = Ub
    x = ops._cholesky_solve(U, b)
    assert torch.equal(x[0], ops._cholesky_solve(U, b[0])) and torch.equal(
        x[1], ops._cholesky_solve(U, b[1])
    )


@pytest.mark.parametrize("d", [520, 777])
def test_cholesky_solve_is_the_same_at_any_thread_count(d):
    """From d = 512 the panels' work is split across torch's threads (two from 512, three
    from 768): the sums' order is fixed by the panels, so every thread count gives the same
    bits, for one right-hand side and for two."""
    g = torch.Generator().manual_seed(d)
    X = torch.randn(d, d, generator=g, dtype=torch.float64)
    U = torch.linalg.cholesky(X @ X.T / d + torch.eye(d, dtype=torch.float64)).mT.contiguous()
    b = torch.randn(2, d, generator=g, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        solves = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            solves.append((ops._cholesky_solve(U, b), ops._cholesky_solve(U, b[0])))
    finally:
        torch.set_num_threads(threads)
    for pair, single in solves[1:]:
        assert torch.equal(pair, solves[0][0]) and torch.equal(single, solves[0][1])
    assert torch.equal(solves[0][0][0], solves[0][1])


def test_cholesky_solve_reads_only_the_upper_triangle():
    """The solvers factorise in place and leave S's values below the diagonal: NaN there
    must not reach x."""
    g = torch.Generator().manual_seed(0)
    d = 37
    X = torch.randn(d, d, generator=g, dtype=torch.float64)
    A = X @ X.T + torch.eye(d, dtype=torch.float64)
    U = torch.linalg.cholesky(A).mT.contiguous()
    b = torch.randn(2, d, generator=g, dtype=torch.float64)
    stale = U + torch.tril(torch.full((d, d), float("nan"), dtype=torch.float64), -1)
    x = ops._cholesky_solve(stale, b)
    assert torch.equal(x, ops._cholesky_solve(U, b))
    torch.testing.assert_close(x, torch.linalg.solve(A, b.T).T, rtol=1e-10, atol=0)


def test_cholesky_solve_rejects_bad_shapes_and_dtypes():
    with pytest.raises(ValueError, match="U must be"):
        ops._cholesky_solve(torch.eye(3, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="U must be"):
        ops._cholesky_solve(
            torch.eye(3, dtype=torch.float64), torch.ones(3, 3, dtype=torch.float64)
        )
    with pytest.raises(ValueError, match="must be float64"):
        ops._cholesky_solve(torch.eye(3), torch.ones(3))
