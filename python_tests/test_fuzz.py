"""Hypothesis fuzzing of every public entry point.

Each call on a fuzzed input must either return the right answer (against float64
``torch.linalg`` references, with conftest's tolerances) or raise a ``ValueError`` that
names the op and the argument: never crash, hang or silently return a wrong value. The
inputs vary in

- shape: d from 1 to MAX_D, features with N < d and N > d, 0-size and 1-D/3-D tensors;
- memory layout: column-major, stepped, padded, ``as_strided`` (the storage around each
  view holds NaN, so a kernel that reads outside the view fails loudly) and stride-0
  (``expand``); ops on S give bit-identical results for a view and a contiguous copy;
- dtype: float32/float64, float16/bfloat16 where accepted, integer/bool/complex refused;
- device: CPU, and meta (the fake kernels) with the same output shapes/dtypes and the
  same argument errors as the CPU kernels;
- values: NaN, +-Inf, denormals, huge and tiny scales, zeros, rank deficiency, repeated
  extremes, kappa up to 1e8 (float64) / 1e5 (float32).

Contract for non-finite values: on the CPU every op on S raises a
``ValueError`` for NaN/Inf; ``gram`` and ``covariance``'s ``theta`` are plain products and
propagate them (into exactly the affected rows and columns), and the ops downstream raise.

Every test runs for the CPU implementations of conftest.IMPLEMENTATIONS (native and
portable). Quick by default (a few seconds per test); ``--hardening-long`` runs
LONG_EXAMPLES_FACTOR times the examples with d up to MAX_D = 640. Minimal repros of the
kernel bugs fuzzing found are in test_regressions.py.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import (
    BASELINE_MULTIPLE,
    TOL_MULTIPLE,
    call_with_bound,
    eig_rtol,
    fuzz_settings,
    is_hardening_long,
    log_spectrum,
    regularizer_rtol,
    rel_err,
    relayout,
    solver_tol,
    spd_from_spectrum,
    summation_rtol,
    unit_norm_error,
)
from hypothesis import example, given, note
from hypothesis import strategies as st

import condnum
from condnum import functional as F
from condnum import reference
from condnum.defaults import dtype_rtol

ops = torch.ops.condnum
f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
#: The modules' NumericalRangeWarnings (rank-deficient batch, eigenvalue at the floor) are
#: tested in test_edge.py; here the values are.
pytestmark = [
    pytest.mark.usefixtures("impl"),
    pytest.mark.filterwarnings("ignore:.*rank-deficient Gram"),
    pytest.mark.filterwarnings("ignore:.*numerical floor"),
]

HALF = (f16, bf16)

#: Largest matrix dimension fuzzed ("large d"): beyond DEFAULT_NUM_ITERS = 128 Lanczos steps.
MAX_D = 640 if is_hardening_long() else 300
#: kappa(S) fuzzed, as in test_extreme_eigh.
MAX_LOG10_KAPPA = {f32: 5, f64: 8}
#: Overall scales 10**[-s, s] fuzzed on S: far beyond where squares of the entries leave the
#: dtype's range (test_eigensolvers_at_extreme_scales), with kappa's room below.
SAFE_LOG10_SCALE = {f32: 30, f64: 250}
#: The same for the regularizers, where the values and gradients must be representable:
#: R_ill ~ lam^-2 and its gradient ~ lam^-3.
REGULARIZER_LOG10_SCALE = {f32: 12, f64: 100}
#: A denormal and a value whose square overflows, per dtype.
DENORMAL = {f16: 1e-7, bf16: 1e-40, f32: 1e-40, f64: 1e-310}
HUGE = {f16: 6e4, bf16: 1e30, f32: 1e30, f64: 1e300}
#: Gradients w.r.t. features against the analytic float64 gradient, relative to its largest
#: entry: eigenvector errors ~ tol / relative gap (>= 36 % here), plus the output rounding.
GRAD_RTOL = {f16: 8e-3, bf16: 4e-2, f32: 5e-3, f64: 1e-5}
#: Memory layouts of a matrix argument (see relayout).
LAYOUTS = ("contiguous", "column-major", "stepped", "padded", "as_strided")
NAN = float("nan")

# ----------------------------------------------------------------------------- helpers


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _product_bound(A: torch.Tensor, B: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rigorous bound on the rounding error of A^T B summed in ``dtype``, entry by entry:
    (n + 2) (eps |A|^T |B| + eta) for inner dimension n, in any summation order (Higham,
    3.5; eta, the smallest subnormal, bounds what underflow loses per product)."""
    n = A.shape[0]
    eta = torch.finfo(dtype).smallest_normal * _eps(dtype)
    return (n + 2) * (_eps(dtype) * (A.double().abs().T @ B.double().abs()) + eta)


def _assert_identical(a, b) -> None:
    """Same shapes, dtypes and bits (tuples of tensors or tensors)."""
    a, b = (a,) if torch.is_tensor(a) else a, (b,) if torch.is_tensor(b) else b
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert torch.equal(x, y)


def _eig_tol(S: torch.Tensor, rtol: float, bound: float | None) -> float:
    """Allowed relative error of an extreme eigenvalue of S (conftest.eig_rtol); a
    convergence warning's bound loosens it."""
    tol = eig_rtol(S, rtol)
    return tol if bound is None else max(tol, 2 * bound)


def _summation_slack(d: int, dtype: torch.dtype, terms: float) -> float:
    """Rounding of a sum over d^2 entries in another order: BASELINE_MULTIPLE d eps of its
    terms (as conftest.summation_rtol)."""
    return BASELINE_MULTIPLE * d * _eps(dtype) * terms


def _check_r_ill(call, hms: float, lam_min: float, lam_tol: float, dtype, d: int):
    """Runs ``call`` (an R_ill evaluation of a d x d S) against the float64 reference.

    ``hms`` = ||S||_F^2 / (2k) and ``lam_min`` (the floored sigma_min; relative error
    allowed: ``lam_tol``, or what a convergence warning admits) give D = hms - lam_min^2 / 2,
    which the op floors at 64 eps hms (kappa = 1, or k above the number of eigenvalues):
    the value must be 1/max(D, floor) to within the error that lam_min's tolerance and the
    sums' rounding propagate. Returns (value, warning's bound).
    """
    value, bound = call_with_bound(call)
    lam_tol = lam_tol if bound is None else max(lam_tol, 2 * bound)
    floor = 64 * _eps(dtype) * hms
    # the op floors at 64 eps of its own ||S||_F^2 / (2k), which the sums' rounding moves
    floor_low = floor - 64 * _eps(dtype) * _summation_slack(d, dtype, hms)
    # |error of D| allowed: lam_min's, the sums' rounding and the floor's
    slack = 2 * lam_tol * lam_min**2 + _summation_slack(d, dtype, hms + lam_min**2 / 2) + floor
    D = hms - 0.5 * lam_min**2
    lo, hi = 1 / (max(D, floor) + slack), 1 / max(D - slack, floor_low)
    r = BASELINE_MULTIPLE * _eps(dtype)  # the reciprocal's rounding
    assert lo * (1 - r) <= value.item() <= hi * (1 + r), (value.item(), lo, hi)
    return value, bound


def _floored_reference(S: torch.Tensor, rtol: float) -> float:
    """max(lam_1, rtol lam_max) of S by float64 eigvalsh: R_ill's sigma_min."""
    ev = torch.linalg.eigvalsh(S.double())
    return max(ev[0].item(), rtol * ev[-1].item())


def _check_r_well(call, hms: float, lam_max: float, lam_tol: float, dtype, d: int):
    """Runs ``call`` (an R_well evaluation of a d x d S): lam_max^2 / 2 - hms, to what
    lam_max's relative error ``lam_tol`` (or a convergence warning's bound) and the sums'
    rounding propagate (the two terms may cancel). Returns (value, bound)."""
    value, bound = call_with_bound(call)
    lam_tol = lam_tol if bound is None else max(lam_tol, 2 * bound)
    ref = 0.5 * lam_max**2 - hms
    slack = 2 * lam_tol * lam_max**2 + _summation_slack(d, dtype, 0.5 * lam_max**2 + hms)
    assert abs(value.item() - ref) <= slack, (value.item(), ref, slack)
    return value, bound


def _in_dtype(expected: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float64 gradient as the kernels return it in ``dtype``: entries beyond its range are
    +-inf (R_ill^2 at the portable path's floor on D can exceed float32's range)."""
    return expected.to(dtype).double()


# ----------------------------------------------------------------------------- strategies

sizes = st.one_of(st.integers(1, 8), st.integers(1, MAX_D))  # small sizes often, up to MAX_D


@st.composite
def psd_cases(draw, dtypes=(f32, f64), log10_scale=SAFE_LOG10_SCALE):
    """(S, rtol): symmetric PSD S and the numerical-range rtol to ask for (None: default).

    Log-uniform spectra (kappa up to MAX_LOG10_KAPPA), optionally with repeated extremes,
    zero eigenvalues, or all equal (kappa = 1), at an overall scale 10**[-s, s],
    s = log10_scale[dtype].
    An explicit rtol sits a decade below the smallest nonzero eigenvalue (above float32
    rounding of the zeros); the default rule (d eps) is drawn only where it has the same
    margin, and for zeros where d eps clears their rounding (d >= 32).
    """
    dtype = draw(st.sampled_from(dtypes))
    d = draw(sizes)
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["log-uniform", "repeated", "rank-deficient", "kappa-one"]))
    log_kappa = draw(st.floats(0, MAX_LOG10_KAPPA[dtype]))
    ev = log_spectrum(d, 10**log_kappa, seed)
    if kind == "repeated" and d >= 3:
        reps = draw(st.integers(2, d - 1))
        ev[1:reps] = ev[1]
        ev[-reps:] = ev[0]
    zeros = kind == "rank-deficient" and d >= 4
    if zeros:
        ev[2 : 2 + draw(st.integers(1, d // 2))] = 0.0
        floor = 10.0 ** -min(log_kappa, 3.0 if dtype == f32 else 8.0)
        ev[ev > 0] = ev[ev > 0].clamp(min=floor)
    if kind == "kappa-one":
        ev = torch.ones(d, dtype=f64)
    s = log10_scale.get(dtype, 0)
    scale = 10 ** draw(st.floats(-s, s))
    S = spd_from_spectrum(ev * scale, seed, dtype)
    positive = ev[ev > 0]
    rtol = 0.1 * (positive.min() / positive.max()).item()
    if zeros and dtype == f32:
        rtol = max(rtol, 1e-4)
    if (d >= 32 or not zeros) and rtol >= 10 * dtype_rtol(S) and draw(st.booleans()):
        rtol = None
    note(f"psd_cases: {dtype} d={d} seed={seed} {kind} log10 kappa={log_kappa!r} scale={scale!r}")
    return S, rtol


@st.composite
def feature_cases(draw):
    """(Z, rtol): features Z = U diag(sigma) V^T, N < d or N > d, and rtol (None: default).

    sigma runs from 1 down to 1/sqrt(kappa) with gaps of >= 20 % at both ends (36 % in the
    eigenvalues of Z^T Z), so the extreme singular vectors and the gradient are well
    defined; rank-deficient Z gets an explicit rtol above the zeros' rounding and a decade
    below the smallest nonzero eigenvalue.
    """
    dtype = draw(st.sampled_from([f16, bf16, f32, f64]))
    n, d = draw(sizes), draw(sizes)
    m = min(n, d)
    rank = m if draw(st.booleans()) else draw(st.integers(1, m))
    max_log_kappa = {f64: 8.0, f32: 3.0}.get(dtype, 2.0)
    log_kappa = draw(st.floats(1, max_log_kappa))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    s_min = 10 ** (-log_kappa / 2)
    inner = torch.exp(
        torch.empty(max(rank - 2, 0), dtype=f64).uniform_(
            math.log(1.25 * s_min), math.log(0.8), generator=g
        )
    )
    sigma = torch.cat([torch.ones(1, dtype=f64), inner, torch.full((1,), s_min, dtype=f64)])
    sigma = sigma[:rank]
    U = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=f64))[0]
    V = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=f64))[0]
    max_scale = REGULARIZER_LOG10_SCALE.get(dtype, 0) / 2  # sigma^2 is the eigenvalue
    scale = 10 ** draw(st.floats(-max_scale, max_scale)) if dtype not in HALF else 4.0
    Z = ((U * (sigma * scale)) @ V.T).to(dtype)
    rtol = None
    if rank < m:
        rtol = 1e-4 if dtype != f64 else 0.1 * 10**-log_kappa
    return Z, rtol


# ----------------------------------------------------------------------------- gram


@fuzz_settings(200)
@given(
    n=sizes,
    d=sizes,
    dtype=st.sampled_from([f16, bf16, f32, f64]),
    layout=st.sampled_from((*LAYOUTS, "expanded")),
    log_scale=st.floats(-2, 2),
    seed=st.integers(0, 2**31 - 1),
)
def test_gram_fuzz(n, d, dtype, layout, log_scale, seed):
    """Any size, layout and dtype: exactly symmetric, float64-accurate, half -> float32."""
    g = torch.Generator().manual_seed(seed)
    scale = 10**log_scale if dtype in HALF else 10 ** (log_scale * SAFE_LOG10_SCALE[dtype] / 4)
    Z = (torch.randn(n, d, generator=g, dtype=f64) * scale).to(dtype)
    Z = Z[:1].expand(n, d) if layout == "expanded" else relayout(Z, layout)
    S = F.gram(Z)
    out_dtype = f32 if dtype in HALF else dtype
    assert S.shape == (d, d) and S.dtype == out_dtype and S.is_contiguous()
    assert torch.equal(S, S.T)
    Zw = Z.to(out_dtype)  # exact for half inputs
    ref = Zw.double().T @ Zw.double()
    assert ((S.double() - ref).abs() <= _product_bound(Zw, Zw, out_dtype)).all()
    _assert_identical(S, F.gram(Z.contiguous()))  # the layout changes no bit


@fuzz_settings(120)
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 40),
    dtype=st.sampled_from([f16, bf16, f32, f64]),
    value=st.sampled_from(["nan", "inf", "-inf", "huge", "denormal", "zero"]),
    where=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 39)), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_gram_of_special_values(n, d, dtype, value, where, seed):
    """Non-finite (or overflowing) features propagate to exactly their columns' rows and
    columns of S; the eigen-solvers and modules downstream then raise. Denormals and zeros
    are ordinary values."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, d, generator=g, dtype=f64).to(dtype)
    v = {"nan": NAN, "inf": math.inf, "-inf": -math.inf, "zero": 0.0}.get(value)
    v = HUGE[dtype] if value == "huge" else DENORMAL[dtype] if value == "denormal" else v
    for i, j in where:
        Z[i % n, j % d] = v
    S = F.gram(Z)
    Zw = Z.to(S.dtype)
    bad = ~torch.isfinite((Zw * Zw).sum(0))  # columns whose squares overflow or hold NaN
    good = ~bad
    if good.any():
        Zg = Zw[:, good]
        error = (S[good][:, good].double() - Zg.double().T @ Zg.double()).abs()
        assert (error <= _product_bound(Zg, Zg, S.dtype)).all()
    assert not torch.isfinite(torch.diagonal(S)[bad]).any()
    if bad.any():
        with pytest.raises(ValueError, match=r"condnum\.extreme_eigh: S contains NaN or Inf"):
            F.extreme_eigh(S)
        for module, op in ((condnum.RIll, "floored_min"), (condnum.RWell, "top_eigh")):
            with pytest.raises(ValueError, match=rf"condnum\.{op}: S contains NaN or Inf"):
                module()(Z)


# ----------------------------------------------------------------------------- covariance


@fuzz_settings(120)
@given(
    D=sizes,
    d=sizes,
    dtype=st.sampled_from([f32, f64]),
    layouts=st.tuples(st.sampled_from(LAYOUTS), st.sampled_from(LAYOUTS)),
    seed=st.integers(0, 2**31 - 1),
)
def test_covariance_fuzz(D, d, dtype, layouts, seed):
    """theta^T K theta for any sizes and layouts: exactly symmetric and float64-accurate;
    a rounding-level asymmetry of K is accepted, a real one and NaN are refused."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(D + 3, D, generator=g, dtype=f64)
    K = (X.T @ X).to(dtype)
    theta = torch.randn(D, d, generator=g, dtype=f64).to(dtype)
    S = F.covariance(relayout(theta, layouts[0]), relayout(K, layouts[1]))
    assert S.shape == (d, d) and S.dtype == dtype and torch.equal(S, S.T)
    ref = theta.double().T @ K.double() @ theta.double()
    # K theta (inner dimension D), then theta^T (K theta): the two bounds compose
    bound = (
        (2 * D + 4)
        * _eps(dtype)
        * (theta.double().abs().T @ K.double().abs() @ theta.double().abs())
    )
    assert ((S.double() - ref).abs() <= bound).all()
    if D >= 2:
        bent = K.clone()
        bent[0, 1] += 1e-2 * K.abs().max()  # far above sqrt(eps) max|K|
        with pytest.raises(ValueError, match=r"condnum\.covariance: K must be symmetric"):
            F.covariance(theta, bent)
    poisoned = K.clone()
    poisoned[D - 1, 0] = poisoned[0, D - 1] = NAN
    with pytest.raises(ValueError, match=r"condnum\.covariance: K contains NaN or Inf"):
        F.covariance(theta, relayout(poisoned, layouts[1]))
    # NaN in theta's column j propagates to row and column j of S only
    j = int(torch.randint(0, d, (1,), generator=g))
    bad_theta = theta.clone()
    bad_theta[int(torch.randint(0, D, (1,), generator=g)), j] = NAN
    S_bad = F.covariance(relayout(bad_theta, layouts[0]), relayout(K, layouts[1]))
    assert S_bad[j, j].isnan()
    keep = torch.arange(d) != j
    error = (S_bad.double() - ref)[keep][:, keep].abs()
    assert (error <= bound[keep][:, keep]).all()


# ----------------------------------------------------------------------------- eigen-solvers


@fuzz_settings(250)
@given(case=psd_cases(), layout=st.sampled_from(LAYOUTS))
def test_extreme_eigh_fuzz(case, layout):
    """extreme_eigh / top_eigh / condition_number on any layout of any PSD S: float64-accurate
    extremes, unit eigenvectors with the sign convention, and the same bits for a view and
    for a contiguous copy."""
    S, rtol = case
    d, dtype = S.shape[0], S.dtype
    view = relayout(S, layout)
    (lam_min, lam_max, u_min, u_max), bound = call_with_bound(F.extreme_eigh, view, rtol=rtol)
    _assert_identical(
        (lam_min, lam_max, u_min, u_max), call_with_bound(F.extreme_eigh, S, rtol=rtol)[0]
    )
    for t, shape in ((lam_min, ()), (lam_max, ()), (u_min, (d,)), (u_max, (d,))):
        assert t.shape == shape and t.dtype == dtype
    rtol_eff = dtype_rtol(S) if rtol is None else rtol
    ref_min, ref_max = reference.float64_extremes(S, rtol_eff)
    tol = _eig_tol(S, rtol_eff, bound)
    # no neighbour of an extreme accepted: the restart check (5000 examples per backend
    # with --hardening-long under two seeds found none)
    assert rel_err(lam_max.item(), ref_max) <= tol
    assert rel_err(lam_min.item(), ref_min) <= tol
    for lam, u in ((lam_min, u_min), (lam_max, u_max)):
        error, bound = unit_norm_error(u)
        assert error <= bound, (error, bound)
        assert u[u.abs().argmax()] > 0
        A = S.double() / ref_max  # scaled: no overflow in the norm
        residual = (A @ u.double() - lam.double() / ref_max * u.double()).norm().item()
        assert residual <= math.sqrt(tol)
    # top_eigh: the same top end, layout-independent too
    (lam_top, u_top), top_bound = call_with_bound(F.top_eigh, view)
    _assert_identical((lam_top, u_top), call_with_bound(F.top_eigh, S)[0])
    assert lam_top.shape == () and u_top.shape == (d,) and lam_top.dtype == dtype
    top_tol = _eig_tol(S, rtol_eff, top_bound)
    assert rel_err(lam_top.item(), ref_max) <= top_tol
    # condition_number is lam_max / lam_min of the same solve
    kappa, _ = call_with_bound(F.condition_number, view, rtol=rtol)
    assert kappa.shape == () and kappa.dtype == dtype
    assert torch.equal(kappa, lam_max / lam_min)


@fuzz_settings(200)
@given(
    case=psd_cases(),
    num_iters=st.one_of(st.integers(1, 4), st.integers(1, 300)),
    log_tol=st.floats(-13, -0.5),
    warm=st.sampled_from([None, "random", "exact"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_solver_budget_warm_start_and_error_bound(case, num_iters, log_tol, warm, seed):
    """Any budget, tolerance and warm start: the raw ops' ``err`` is an honest relative error
    bound, and the functional wrappers warn exactly when it exceeds ``tol``."""
    S, rtol = case
    d, dtype = S.shape[0], S.dtype
    rtol = dtype_rtol(S) if rtol is None else rtol
    tol = 10**log_tol
    v0_min = v0_max = None
    if warm == "random":
        g = torch.Generator().manual_seed(seed)
        v0_min, v0_max = torch.randn(2, d, generator=g, dtype=f64).to(dtype).unbind()
    elif warm == "exact":  # the eigenvectors of the previous step, as RIll/RWell pass them
        _, _, v0_min, v0_max = call_with_bound(F.extreme_eigh, S, rtol=rtol)[0]
    try:
        raw = ops.extreme_eigh(S, num_iters, rtol, tol, v0_min, v0_max)
    except ValueError as error:  # too small a budget to find the bottom at all: it says so
        assert re.search(rf"num_iters = {num_iters} is too small", str(error)), error
        return
    lam_min, lam_max, u_min, u_max, err = raw
    assert err.shape == () and err.dtype == f64 and err.item() >= 0
    assert [t.shape for t in raw[:4]] == [(), (), (d,), (d,)]
    assert all(t.dtype == dtype for t in raw[:4])
    kw = {"rtol": rtol, "num_iters": num_iters, "tol": tol, "v0_min": v0_min, "v0_max": v0_max}
    out, bound = call_with_bound(F.extreme_eigh, S, **kw)
    _assert_identical(out, raw[:4])
    assert (bound is not None) == (err.item() > tol)
    # some eigenvalue of S lies within err |lam| of each returned one (up to S's rounding)
    ev = torch.linalg.eigvalsh(S.double())
    rounding = 8 * math.sqrt(d) * _eps(dtype) * ev[-1].item()
    for lam in (lam_min.item(), lam_max.item()):
        assert (ev - lam).abs().min().item() <= 2 * err.item() * abs(lam) + rounding
    lam_top, _, err_top = ops.top_eigh(S, num_iters, tol, v0_max)
    assert err_top.dtype == f64
    assert (ev - lam_top.item()).abs().min().item() <= 2 * err_top.item() * abs(lam_top) + rounding


@fuzz_settings(100)
@given(
    d=st.integers(1, 40),
    dtype=st.sampled_from([f32, f64]),
    value=st.sampled_from([NAN, math.inf, -math.inf]),
    i=st.integers(0, 39),
    j=st.integers(0, 39),
    symmetric=st.booleans(),
    layout=st.sampled_from(LAYOUTS),
)
def test_non_finite_S_is_refused_by_every_entry_point(d, dtype, value, i, j, symmetric, layout):
    """NaN/+-Inf anywhere in S (on or off the diagonal, mirrored or not): a ValueError that
    names the op and S, from each functional, module and raw solver."""
    S = spd_from_spectrum(log_spectrum(d, 100.0, d), d, dtype)
    S[i % d, j % d] = value
    if symmetric:
        S[j % d, i % d] = value
    S = relayout(S, layout)
    calls = {
        "extreme_eigh": [
            lambda: F.extreme_eigh(S),
            lambda: F.condition_number(S),
            lambda: F.r_ill(S, edge="range"),
            lambda: ops.extreme_eigh(S, 8, 0.0, 1e-4, None, None),
        ],
        "floored_min": [
            lambda: F.floored_min(S),
            lambda: condnum.RIll(input="gram")(S),
            lambda: F.r_ill(S),
            lambda: ops.floored_min(S, 8, 0.0, 1e-4, None, None),
        ],
        "top_eigh": [
            lambda: F.top_eigh(S),
            lambda: F.r_well(S),
            lambda: condnum.RWell(input="gram")(S),
            lambda: ops.top_eigh(S, 8, 1e-4, None),
        ],
    }
    for op, fns in calls.items():
        for fn in fns:
            with pytest.raises(ValueError, match=rf"condnum\.{op}: S contains NaN or Inf"):
                fn()


@fuzz_settings(100)
@given(
    d=st.integers(1, 60),
    dtype=st.sampled_from([f32, f64]),
    n_entries=st.integers(1, 6),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**31 - 1),
)
def test_denormal_entries_are_ordinary_values(d, dtype, n_entries, layout, seed):
    """Denormals (mirrored) in place of the zeros of a block-diagonal S: ordinary values."""
    g = torch.Generator().manual_seed(seed)
    h = (d + 1) // 2
    S = torch.block_diag(
        spd_from_spectrum(log_spectrum(h, 1e3, seed), seed, dtype),
        spd_from_spectrum(log_spectrum(d - h, 1e3, seed + 1), seed + 1, dtype),
    )
    for _ in range(n_entries if d > h else 0):
        i, j = (
            int(torch.randint(0, h, (1,), generator=g)),
            int(torch.randint(h, d, (1,), generator=g)),
        )
        S[i, j] = S[j, i] = DENORMAL[dtype]
    (lam_min, lam_max, _, _), bound = call_with_bound(
        F.extreme_eigh, relayout(S, layout), rtol=1e-4
    )
    ref_min, ref_max = reference.float64_extremes(S, 1e-4)
    assert rel_err(lam_max.item(), ref_max) <= _eig_tol(S, 1e-4, bound)
    assert rel_err(lam_min.item(), ref_min) <= _eig_tol(S, 1e-4, bound)


@fuzz_settings(100)
@given(
    d=st.integers(1, MAX_D),
    dtype=st.sampled_from([f32, f64]),
    log_c=st.floats(-10, 10),
    kind=st.sampled_from(["expand", "as_strided-hankel"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_stride_zero_and_overlapping_views(d, dtype, log_c, kind, seed, impl):
    """S with stride 0 (``c * ones`` by ``expand``) and with overlapping memory (a Hankel
    moment matrix by ``as_strided``, strides (1, 1)): the results of a contiguous copy."""
    c = 10**log_c
    if kind == "expand":  # rank 1: lam_max = c d; rtol = 0.1 keeps the numerical range {c d}
        S, rtol = torch.full((1, 1), c, dtype=dtype).expand(d, d), 0.1
    else:  # S_ij = m_{i+j}, moments of a positive measure on [0.2, 1]: PSD
        d = min(d, 6)  # moment matrices are exponentially ill-conditioned
        g = torch.Generator().manual_seed(seed)
        x = 0.2 + 0.8 * torch.rand(16, generator=g, dtype=f64)
        w = torch.rand(16, generator=g, dtype=f64) + 0.1
        moments = (w * x ** torch.arange(2 * d - 1, dtype=f64)[:, None]).sum(1) * c
        S, rtol = moments.to(dtype).as_strided((d, d), (1, 1)), 1e-3
    out, bound = call_with_bound(F.extreme_eigh, S, rtol=rtol)
    _assert_identical(out, call_with_bound(F.extreme_eigh, S.contiguous(), rtol=rtol)[0])
    ref_min, ref_max = reference.float64_extremes(S, rtol)
    assert rel_err(out[1].item(), ref_max) <= _eig_tol(S, rtol, bound)
    assert rel_err(out[0].item(), ref_min) <= _eig_tol(S, rtol, bound)
    lam_top, u_top = call_with_bound(F.top_eigh, S)[0]
    _assert_identical((lam_top, u_top), call_with_bound(F.top_eigh, S.contiguous())[0])
    if kind == "expand":  # rank 1: sigma_min at the floor rtol * lam_max, R_ill finite
        value = F.r_ill(S, rtol=rtol)
        expected = reference.r_ill(S.contiguous(), rtol=rtol).item()
        assert rel_err(value.item(), expected) <= regularizer_rtol("r_ill", S, rtol=rtol)
    # a stride-0 S that is not symmetric is refused
    if d > 1:
        row = torch.arange(1.0, d + 1, dtype=dtype)
        with pytest.raises(ValueError, match=r"condnum\.extreme_eigh: S must be symmetric"):
            F.extreme_eigh(row.expand(d, d))


@fuzz_settings(40)
@given(
    d=sizes,
    n=sizes,
    dtype=st.sampled_from([f32, f64]),
    layout=st.sampled_from(LAYOUTS),
)
def test_all_zero_inputs(d, n, dtype, layout, impl):
    """S = 0 and Z = 0: extreme_eigh returns zeros and unit
    vectors, condition_number says why it is undefined, R_ill is +inf (RIll does not push),
    R_well is 0 with a zero gradient, on any size and layout."""
    S = relayout(torch.zeros(d, d, dtype=dtype), layout)
    lam_min, lam_max, u_min, u_max = F.extreme_eigh(S)
    assert lam_min.item() == 0 and lam_max.item() == 0
    for u in (u_min, u_max):
        assert u.shape == (d,) and u.dtype == dtype
        error, bound = unit_norm_error(u)
        assert error <= bound, (error, bound)
    assert F.top_eigh(S)[0].item() == 0
    with pytest.raises(ValueError, match=r"condnum\.condition_number: S is zero"):
        F.condition_number(S)
    assert F.r_ill(S).item() == math.inf
    Z = relayout(torch.zeros(n, d, dtype=dtype), layout).requires_grad_()
    value = condnum.RWell()(Z)
    assert value.item() == 0 and value.dtype == dtype
    (grad,) = torch.autograd.grad(value, Z)
    assert grad.shape == (n, d) and not grad.any()
    value = condnum.RIll()(Z)
    assert value.item() == math.inf
    (grad,) = torch.autograd.grad(value, Z)
    assert not grad.any()


# ----------------------------------------------------------------------------- regularizers


@fuzz_settings(200)
@given(
    case=psd_cases(log10_scale=REGULARIZER_LOG10_SCALE),
    k_factor=st.floats(0.01, 2.0),
    which=st.sampled_from(["r_ill", "r_well"]),
    entry=st.sampled_from(["functional", "module"]),
    layout=st.sampled_from(LAYOUTS),
)
def test_regularizers_on_S_fuzz(case, k_factor, which, entry, layout, impl):
    """r_ill / r_well and RIll / RWell(input="gram") for any S, k in [1, 2d] and layout: the
    float64 value (or the documented +inf error), the analytic gradient, and the same bits
    for a view and for a contiguous copy."""
    S, rtol = case
    d, dtype = S.shape[0], S.dtype
    k = max(1, round(k_factor * d))
    rtol_eff = dtype_rtol(S) if rtol is None else rtol
    ref_min, ref_max = reference.float64_extremes(S, rtol_eff)
    hms = S.double().square().sum().item() / (2 * k)
    lam_tol = eig_rtol(S, rtol_eff)

    floored = _floored_reference(S, rtol_eff)

    def evaluate(A):
        if entry == "module":
            module = (
                condnum.RIll(k, rtol, input="gram", kappa_target=math.inf)
                if which == "r_ill"
                else condnum.RWell(k, input="gram")
            )
            return module(A)
        return F.r_ill(A, k, rtol) if which == "r_ill" else F.r_well(A, k)

    view = relayout(S, layout).requires_grad_()
    if which == "r_ill":
        value, _ = _check_r_ill(lambda: evaluate(view), hms, floored, lam_tol, dtype, d)
    else:
        value, _ = _check_r_well(lambda: evaluate(view), hms, ref_max, lam_tol, dtype, d)
    assert value.shape == () and value.dtype == dtype
    (grad,) = torch.autograd.grad(value, view)
    assert grad.shape == (d, d) and grad.dtype == dtype
    # the analytic gradient from the same solve: lam u u^T - S / k, times R^2 for R_ill
    if which == "r_ill":
        m = call_with_bound(F.floored_min, S, rtol)[0]
        lam, u = m.lam, m.u
        R = value.detach().double()  # R (R X): R^2 alone may leave float64's normal range
        expected = R * (R * (lam.double() * torch.outer(u.double(), u.double()) - S.double() / k))
        if entry == "module" and bool(m.saturated):  # RIll stops pushing at the floor
            expected = torch.zeros_like(expected)
    else:
        lam, u = call_with_bound(F.top_eigh, S)[0]
        expected = lam.double() * torch.outer(u.double(), u.double()) - S.double() / k
    expected = _in_dtype(expected, dtype)
    finite = expected[expected.isfinite()]
    # the same formula on the same (lam, u): a few roundings of each entry's terms, and for
    # R_ill twice R's (conftest.summation_rtol)
    if which == "r_ill":
        tol = 2 * BASELINE_MULTIPLE * summation_rtol(which, S, k, rtol_eff)
        scale = finite.abs().max().item() if finite.numel() else 0.0
    else:
        tol = BASELINE_MULTIPLE * _eps(dtype)
        scale = lam.double().item() + S.double().abs().max().item() / k
    torch.testing.assert_close(grad.double(), expected, rtol=tol, atol=tol * scale)
    # a contiguous copy: the same bits, forward and backward
    copy = S.clone().requires_grad_()
    copy_value = call_with_bound(evaluate, copy)[0]
    _assert_identical(value, copy_value)
    _assert_identical(grad, torch.autograd.grad(copy_value, copy)[0])


@fuzz_settings(150)
@given(
    case=feature_cases(),
    which=st.sampled_from(["RIll", "RWell"]),
    layout=st.sampled_from((*LAYOUTS, "transposed-view")),
)
def test_modules_on_features_fuzz(case, which, layout, impl):
    """RIll / RWell on features of any shape (N < d and N > d), dtype and layout: the float64
    value from Z's singular values (k = min(N, d), sigma_min floored), and dR/dZ against the
    analytic float64 gradient; a second (warm-started) call agrees."""
    Z, rtol = case
    n, d = Z.shape
    dtype = Z.dtype
    s_dtype = f32 if dtype in HALF else dtype
    Zd = Z.double()
    Uf, sv, Vh = torch.linalg.svd(Zd, full_matrices=False)
    lam = sv**2  # the nonzero spectrum of Z^T Z (and of Z Z^T)
    rtol_eff = min(n, d) * _eps(s_dtype) if rtol is None else rtol
    keep = lam > rtol_eff * lam[0]
    i_min = int(keep.nonzero().max())
    lam_max, lam_min = lam[0].item(), lam[i_min].item()
    saturated = not bool(keep.all())  # an eigenvalue below the floor: sigma_min is the floor
    floored = rtol_eff * lam_max if saturated else lam_min
    hms = lam.square().sum().item() / (2 * min(n, d))  # k = min(N, d), the size solved
    # plain float32/float64 eigvalsh on the Gram in the working dtype sets the attainable accuracy
    Zs = Z.to(s_dtype)
    ev = torch.linalg.eigvalsh(Zs.T @ Zs if n >= d else Zs @ Zs.T)
    torch_err = rel_err(reference.smallest_in_range(ev, rtol_eff).item(), lam_min)
    lam_tol = TOL_MULTIPLE * solver_tol(s_dtype) + BASELINE_MULTIPLE * torch_err
    if layout == "transposed-view":
        view = Z.T.contiguous().T
    else:
        view = relayout(Z, layout)
    view.requires_grad_()
    module = condnum.RIll(rtol=rtol, kappa_target=math.inf) if which == "RIll" else condnum.RWell()

    def evaluate():
        if which == "RIll":
            return _check_r_ill(lambda: module(view), hms, floored, lam_tol, s_dtype, max(n, d))
        return _check_r_well(lambda: module(view), hms, lam_max, lam_tol, s_dtype, max(n, d))

    value, bound = evaluate()
    assert bound is None or bound <= 1e-2  # well-separated extremes: converged, or nearly
    assert value.shape == () and value.dtype == s_dtype
    assert module.u_max.shape == (min(n, d),) and module.u_max.dtype == s_dtype
    (grad,) = torch.autograd.grad(value, view)
    assert grad.shape == (n, d) and grad.dtype == dtype
    # dR/dZ = 2 Z G(Z^T Z) = 2 c (lam^{3/2} u v^T - Z Z^T Z / k) for the singular pair (u, v)
    # of lam = lam_min (c = R_ill^2) or lam_max (c = 1)
    i = i_min if which == "RIll" else 0
    # c = R^2, applied as R (R X); D floored as the op does (kappa = 1)
    R = 1 / max(hms - 0.5 * lam_min**2, 64 * _eps(s_dtype) * hms) if which == "RIll" else 1.0
    if R * (R * lam[i].item()) > torch.finfo(s_dtype).max:
        return  # dR/dS (the chain runs through S) is beyond S's dtype: +-inf, as documented
    cubic = Zd @ Zd.T @ Zd / min(n, d)
    expected = 2 * R * (R * (lam[i] ** 1.5 * torch.outer(Uf[:, i], Vh[i]) - cubic))
    expected = _in_dtype(expected, dtype)
    scale = 2 * R * (R * max(lam[i].item() ** 1.5, cubic.abs().max().item()))  # of the two terms
    if which == "RIll" and saturated:  # at the floor RIll stops pushing
        expected = torch.zeros_like(expected)
    finite = expected.isfinite()
    assert torch.equal(grad.double()[~finite], expected[~finite])
    assert ((grad.double() - expected)[finite].abs() <= GRAD_RTOL[dtype] * scale).all()
    # the second call is warm-started from the buffers (and may solve in float64): as
    # accurate as the first
    evaluate()


@fuzz_settings(60)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=2, max_size=5),
    dtypes=st.lists(st.sampled_from([f32, f64, bf16]), min_size=5, max_size=5),
    devices=st.lists(st.sampled_from(["cpu", "cpu", "meta"]), min_size=5, max_size=5),
    seed=st.integers(0, 2**31 - 1),
)
@example(shapes=[(9, 4), (9, 4)], dtypes=[f32] * 5, devices=["meta", "cpu", "cpu"] * 2, seed=0)
def test_module_buffers_follow_shape_dtype_and_device(shapes, dtypes, devices, seed, impl):
    """One module across inputs of changing shape, dtype and device: each output equals a
    fresh module's to the solver's accuracy, and the warm-start buffers follow the input."""
    g = torch.Generator().manual_seed(seed)
    r_well, r_ill = condnum.RWell(), condnum.RIll(k=1)  # k = 1: D > 0 for any kappa > 1
    # (and a module switched to float64 solves keeps its values' dtype)
    for (n, d), dtype, device in zip(shapes, dtypes, devices, strict=False):
        Z = torch.randn(n, d, generator=g, dtype=f64).to(dtype).to(device)
        for module, fresh in ((r_well, condnum.RWell()), (r_ill, condnum.RIll(k=1))):
            module.float64 = False  # this test is about buffers; test_edge.py tests the switch
            expected = call_with_bound(fresh, Z)[0]  # kappa = 1 (n = 1 or d = 1): D at its floor
            out = call_with_bound(module, Z)[0]
            assert out.shape == expected.shape and out.dtype == expected.dtype
            assert out.device == expected.device
            if device == "cpu":  # warm vs cold start, both to the solver's accuracy
                terms = abs(expected.item()) + F.gram(Z).double().square().sum().item()
                # two solves, each within TOL_MULTIPLE tol, and the sums' rounding
                eps = torch.finfo(expected.dtype).eps
                tol = 2 * (TOL_MULTIPLE * solver_tol(expected.dtype) + BASELINE_MULTIPLE * d * eps)
                assert abs(out.item() - expected.item()) <= tol * terms
            assert module.u_max.device == Z.device and module.u_max.shape == (min(n, d),)
            assert module.u_max.dtype == expected.dtype


# ----------------------------------------------------------------------------- dtypes, shapes, meta


#: Each public entry point on one tensor argument, and what it says of a bad dtype.
ENTRY_POINTS = {
    "gram": (lambda X: F.gram(X), "Z must be float16, bfloat16, float32 or float64"),
    "covariance(theta)": (
        lambda X: F.covariance(X, torch.eye(X.shape[0], dtype=f32) if X.dim() else X),
        "theta must be float32 or float64",
    ),
    "extreme_eigh": (lambda X: F.extreme_eigh(X), "S must be float32 or float64"),
    "top_eigh": (lambda X: F.top_eigh(X), "S must be float32 or float64"),
    "condition_number": (lambda X: F.condition_number(X), "S must be float32 or float64"),
    "r_ill": (lambda X: F.r_ill(X), "S must be float32 or float64"),
    "r_well": (lambda X: F.r_well(X), "S must be float32 or float64"),
    "RIll": (lambda X: condnum.RIll()(X), "Z must be float16, bfloat16, float32 or float64"),
    "RWell": (lambda X: condnum.RWell()(X), "Z must be float16, bfloat16, float32 or float64"),
    "RIll(gram)": (lambda X: condnum.RIll(input="gram")(X), "S must be float32 or float64"),
    "RWell(gram)": (lambda X: condnum.RWell(input="gram")(X), "S must be float32 or float64"),
}
BAD_DTYPES = [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64, torch.complex128]


@fuzz_settings(60)
@given(
    entry=st.sampled_from(sorted(ENTRY_POINTS)),
    dtype=st.sampled_from(BAD_DTYPES),
    shape=st.sampled_from([(3, 3), (4, 2), (1, 1)]),
    device=st.sampled_from(["cpu", "meta"]),
)
def test_non_float_dtypes_are_refused(entry, dtype, shape, device):
    """Integer, bool and complex inputs: a ValueError naming the argument and the dtypes
    accepted, on the CPU and on meta alike."""
    X = torch.ones(shape, dtype=dtype, device=device)
    fn, message = ENTRY_POINTS[entry]
    with pytest.raises(ValueError, match=rf"condnum\.\w+: {message}, got"):
        fn(X)


@fuzz_settings(60)
@given(
    entry=st.sampled_from(sorted(ENTRY_POINTS)),
    shape=st.sampled_from([(0,), (3,), (0, 0), (0, 4), (4, 0), (2, 3, 3), ()]),
    device=st.sampled_from(["cpu", "meta"]),
)
def test_empty_and_non_matrix_inputs_are_refused(entry, shape, device):
    """0-size, 0-D, 1-D and 3-D inputs: a ValueError that names the argument and the shape
    as passed."""
    X = torch.ones(shape, device=device)
    shown = re.escape(str(list(shape)))
    with pytest.raises(ValueError, match=rf"condnum\.\w+: .*(2-D|empty).*{shown}"):
        ENTRY_POINTS[entry][0](X)


@fuzz_settings(120)
@given(
    case=psd_cases(log10_scale={f32: 2, f64: 2}),
    half=st.sampled_from([None, f16, bf16]),
    n_extra=st.integers(-3, 3),
)
def test_meta_outputs_have_the_cpu_shapes_and_dtypes(case, half, n_extra):
    """On meta (the fake kernels) every entry point gives the shapes and dtypes it gives on
    the CPU: half S is solved in float32; R_ill/R_well are 0-dim in S's dtype."""
    S, rtol = case
    S = S if half is None else S.to(half)
    d = S.shape[0]
    Z = torch.randn(max(1, d + n_extra), d, dtype=S.dtype)
    calls = {
        "gram": lambda A, B: F.gram(B),
        "extreme_eigh": lambda A, B: F.extreme_eigh(A, rtol=rtol, tol=0.5),
        "top_eigh": lambda A, B: F.top_eigh(A, tol=0.5),
        "condition_number": lambda A, B: F.condition_number(A, rtol=rtol),
        "RWell": lambda A, B: condnum.RWell()(B),
    }
    if S.dtype not in HALF:
        calls["covariance"] = lambda A, B: F.covariance(B.mT, A)
        calls["r_well"] = lambda A, B: F.r_well(A)
    for name, fn in calls.items():
        try:
            cpu = call_with_bound(fn, S, Z)[0]
        except ValueError as err:  # rounding S to half may make it indefinite, or zero
            assert half is not None and re.search("positive semi-definite|S is zero", str(err))
            continue
        if name == "extreme_eigh" and half is not None:  # solved as S.float()
            _assert_identical(cpu, call_with_bound(fn, S.float(), Z)[0])
        meta = fn(S.to("meta"), Z.to("meta"))
        cpu, meta = (
            (cpu,) if torch.is_tensor(cpu) else cpu,
            (meta,) if torch.is_tensor(meta) else meta,
        )
        assert [(t.shape, t.dtype) for t in meta] == [(t.shape, t.dtype) for t in cpu], name
        assert all(t.device.type == "meta" for t in meta)


def _vector(d: int, variant: str, dtype: torch.dtype) -> torch.Tensor | None:
    return {
        "none": None,
        "ok": torch.ones(d, dtype=dtype),
        "long": torch.ones(d + 1, dtype=dtype),
        "column": torch.ones(d, 1, dtype=dtype),
        "other-dtype": torch.ones(d, dtype=f64 if dtype == f32 else f32),
    }[variant]


@st.composite
def raw_op_calls(draw):
    """(op name, args): valid and invalid argument combinations for every raw op."""
    op = draw(
        st.sampled_from(
            [
                "gram",
                "covariance",
                "extreme_eigh",
                "top_eigh",
                "r_ill",
                "r_well",
                "_r_ill_backward",
                "_r_well_backward",
            ]
        )
    )
    dtype = draw(st.sampled_from([f32, f64, f32, f64, f16, torch.int64]))
    d = draw(st.integers(1, 6))
    shape = draw(st.sampled_from([(d, d), (d, d), (d, d), (d, d + 1), (d,), (0, 0)]))
    if len(shape) == 2 and shape[0] == shape[1] and shape[0] > 0:
        S = torch.diag(torch.arange(1, d + 1, dtype=f64)).to(dtype)  # PSD, kappa = d
    else:
        S = torch.ones(shape, dtype=dtype)
    vec = st.sampled_from(["ok", "ok", "none", "long", "column", "other-dtype"])
    vdtype = dtype if dtype in (f32, f64) else f32
    if op == "gram":
        return op, (S,)
    if op == "covariance":
        theta = torch.ones(
            draw(st.sampled_from([d, d + 1])), 2, dtype=draw(st.sampled_from([dtype, f64]))
        )
        return op, (theta, S)
    if op in ("extreme_eigh", "top_eigh"):
        num_iters = draw(st.sampled_from([8, 8, 1, 0, -3]))
        tol = draw(st.sampled_from([1e-4, 1e-4, 0.5, 0.0, 1.0, NAN]))
        if op == "top_eigh":
            return op, (S, num_iters, tol, _vector(d, draw(vec), vdtype))
        rtol = draw(st.sampled_from([0.0, 1e-3, 1.0, -1.0, NAN]))
        return op, (
            S,
            num_iters,
            rtol,
            tol,
            _vector(d, draw(vec), vdtype),
            _vector(d, draw(vec), vdtype),
        )
    lam = torch.tensor(
        1.0, dtype=draw(st.sampled_from([vdtype, vdtype, f64 if vdtype == f32 else f32]))
    )
    lam = lam.reshape(1) if draw(st.integers(0, 5)) == 0 else lam
    u = _vector(d, draw(st.sampled_from(["ok", "ok", "long", "column", "other-dtype"])), vdtype)
    u = u / u.norm() if u.dim() == 1 else u
    k = draw(st.sampled_from([d, d, 1, 0, -1]))
    if op in ("r_ill", "r_well"):
        return op, (S, lam, u, k)
    grad = torch.tensor(1.0, dtype=vdtype)
    if op == "_r_ill_backward":
        return op, (grad, S, torch.tensor(0.5, dtype=vdtype), lam, u, k)
    return op, (grad, S, lam, u, k)


def _to_meta(args):
    return tuple(a.to("meta") if torch.is_tensor(a) else a for a in args)


#: CPU errors that depend on values, which the meta device does not have.
VALUE_ERRORS = r"NaN or Inf|symmetric|positive semi-definite|finite and nonzero|1/D is \+inf"
#: tol = 0 is valid on the portable backend only; the fake kernels serve every backend.
BACKEND_ERROR = "a mode of the portable backend"


@fuzz_settings(300)
@given(call=raw_op_calls())
def test_raw_ops_fake_kernels_agree_with_the_cpu(call):
    """Each raw op, valid or not, on the CPU and on meta: the same output shapes and dtypes,
    or a ValueError naming the same op and argument: the fake kernels check shapes and
    dtypes in the same order as the C++ checks."""
    name, args = call
    op = getattr(ops, name)
    try:
        cpu = op(*args)
    except ValueError as err:
        cpu_error = str(err)
    else:
        cpu_error = None
    try:
        meta = op(*_to_meta(args))
    except ValueError as err:
        meta_error = str(err)
    else:
        meta_error = None
    if cpu_error is not None and BACKEND_ERROR in cpu_error:
        return
    if cpu_error is None or re.search(VALUE_ERRORS, cpu_error):
        assert meta_error is None, meta_error
        if cpu_error is None:
            cpu, meta = (
                (cpu,) if torch.is_tensor(cpu) else cpu,
                (meta,) if torch.is_tensor(meta) else meta,
            )
            assert [(t.shape, t.dtype) for t in meta] == [(t.shape, t.dtype) for t in cpu]
        return
    assert cpu_error.startswith(f"condnum.{name}: "), cpu_error

    def head(message: str) -> str:  # "condnum.op: argument" (dtype spellings differ)
        return re.split(r" must | and ", message)[0]

    assert meta_error is not None and head(meta_error) == head(cpu_error), (cpu_error, meta_error)
