"""The native/portable switch, the shared solver policy, and the two backends' agreement."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    HAS_FP32_PRECISION,
    eig_rtol,
    fp32_matmul_precision,
    log_spectrum,
    regularizer_rtol,
    rel_err,
    spd_from_spectrum,
)

import condnum
from condnum import _policy, reference
from condnum import functional as F
from condnum.portable.checks import max_asymmetry
from condnum.portable.lanczos import Lanczos, pair_operator, pseudo_random_unit

ops = torch.ops.condnum
CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _cpu_kernel(op: str) -> str:
    """Where the CPU dispatch key's kernel of ``condnum::op`` was registered."""
    table = torch._C._dispatch_dump(f"condnum::{op}")
    return re.search(r"^CPU: registered at (\S+)", table, re.M).group(1)


# ----------------------------------------------------------------------------- the switch


def test_default_backend_comes_from_the_environment():
    assert condnum.backend() == os.environ.get("CONDNUM_BACKEND", "auto")


@pytest.mark.parametrize("op", ["gram", "extreme_eigh", "r_ill", "_r_well_backward"])
def test_context_manager_switches_the_cpu_kernel_and_restores_it(op):
    before = condnum.backend()
    with condnum.backend("native"):
        assert "csrc/cpu" in _cpu_kernel(op)
        with condnum.backend("portable"):  # nested: restored on exit
            assert condnum.backend() == "portable"
            assert "condnum/portable/registration.py" in _cpu_kernel(op)
        assert condnum.backend() == "native"
        assert "csrc/cpu" in _cpu_kernel(op)
    assert condnum.backend() == before
    with condnum.backend("portable"):  # a second override emits no warning either
        assert "portable" in _cpu_kernel(op)


def test_every_device_without_a_native_kernel_gets_the_portable_one():
    for op in ("gram", "covariance", "extreme_eigh", "top_eigh", "r_ill", "r_well"):
        table = torch._C._dispatch_dump(f"condnum::{op}")
        assert re.search(
            r"^CompositeExplicitAutograd\[alias\]: registered at \S+registration", table, re.M
        )
        assert re.search(r"^Meta: registered at \S+library\.py", table, re.M)  # fake kernels


def test_a_device_without_float64_gets_an_error_that_names_the_remedy(monkeypatch):
    """MPS has no float64, which the solvers and the regularizers use on the input's device:
    their portable implementations raise a TypeError saying so, while gram and covariance
    still run. Emulated on the CPU by making the portable path's float64 probe say no."""
    from condnum.portable import registration

    assert registration._has_float64(torch.device("cpu"))
    S = spd_from_spectrum(log_spectrum(12, 1e2, seed=0), seed=0, dtype=torch.float32)
    Z = torch.randn(20, 12, generator=torch.Generator().manual_seed(0))
    u, one = torch.ones(12) / 12**0.5, torch.ones(())
    solves = [
        ("extreme_eigh", lambda: F.extreme_eigh(S)),
        ("top_eigh", lambda: F.top_eigh(S)),
        ("floored_min", lambda: F.floored_min(S)),
        ("r_ill", lambda: ops.r_ill(S, one, u, 12)),
        ("r_well", lambda: ops.r_well(S, one, u, 12)),
        ("r_ill_backward", lambda: ops._r_ill_backward(one, S, one, one, u, 12)),
        ("r_well_backward", lambda: ops._r_well_backward(one, S, one, u, 12)),
        ("floored_min", lambda: condnum.RIll()(Z)),  # the module's first solve
        ("top_eigh", lambda: condnum.RWell()(Z)),
    ]
    monkeypatch.setattr(registration, "_has_float64", lambda device: False)
    with condnum.backend("portable"):
        torch.testing.assert_close(F.gram(Z), Z.mT @ Z)
        torch.testing.assert_close(F.covariance(Z, torch.eye(20)), Z.mT @ Z)
        for name, solve in solves:
            with pytest.raises(TypeError, match=rf"^condnum\.{name}: .* cpu has no float64; move"):
                solve()
    assert torch.isfinite(F.extreme_eigh(S)[0])  # the native CPU kernel needs no probe


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="condnum.backend: the backend must be one of"):
        condnum.backend("cuda")


@pytest.mark.parametrize(("value", "expected"), [("portable", "portable"), ("native", "native")])
def test_environment_variable_sets_the_backend(value, expected):
    code = "import condnum; print(condnum.backend())"
    env = {**os.environ, "CONDNUM_BACKEND": value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_environment_variable_with_a_typo_is_refused():
    env = {**os.environ, "CONDNUM_BACKEND": "portible"}
    out = subprocess.run(
        [sys.executable, "-c", "import condnum"], env=env, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "condnum.backend: $CONDNUM_BACKEND must be one of" in out.stderr


# ----------------------------------------------------------------------------- one policy

POLICY_H = CSRC / "solver_policy.h"
#: Header constants the portable path does not use, with why.
NATIVE_ONLY = {
    "kEps32": "machine epsilon (torch.finfo on the portable side)",
    "kEps64": "machine epsilon (torch.finfo on the portable side)",
    "kSecondPass": "the portable Lanczos always makes two Gram-Schmidt passes",
    "kInverseIterations": "the portable path takes T's eigenvectors from eigh",
    "kNormRescaleBelow": "the portable squared norm always rescales",
}


def _header_constants() -> dict[str, float]:
    found = re.findall(r"constexpr \w+ (k\w+) = ([0-9.e+x-]+p?-?\d*);", POLICY_H.read_text())
    return {name: float.fromhex(v) if "x" in v else float(v) for name, v in found}


def _python_name(cpp: str) -> str:
    """kSkiRental -> SKI_RENTAL, kTauDEps -> TAU_D_EPS."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cpp[1:]).upper()


def test_every_policy_constant_is_mirrored_with_the_same_value():
    constants = _header_constants()
    assert {"kFirstCheck", "kSkiRental", "kIllFloor", "kFloorSlack"} <= constants.keys()
    for cpp, value in constants.items():
        if cpp in NATIVE_ONLY:
            continue
        python = _python_name(cpp)
        assert hasattr(_policy, python), f"{cpp} has no mirror {python} in condnum/_policy.py"
        assert getattr(_policy, python) == value, (cpp, value, getattr(_policy, python))


def test_per_dtype_policy_values_equal_the_header():
    header = POLICY_H.read_text()
    per_dtype = r"\(bool single\) \{ return single \? ([0-9.e-]+) : ([0-9.e-]+);"
    f32, f64 = re.search(r"symmetry_rtol" + per_dtype, header).groups()
    assert _policy.SYMMETRY_RTOL == {torch.float32: float(f32), torch.float64: float(f64)}
    f32, f64 = re.search(r"range_exponent_limit" + per_dtype, header).groups()
    assert _policy.RANGE_EXPONENT_LIMIT == {torch.float32: int(f32), torch.float64: int(f64)}
    # the indefiniteness test and the Cholesky ladder's top: sqrt(eps(S)) lam_max
    assert "!(lowest >= -sqrt(eps_s) * fabs(lam_max))" in header
    assert "const double top = sqrt(eps_s) * lam_max;" in header
    assert _policy.indefinite_floor(torch.float32) == torch.finfo(torch.float32).eps ** 0.5


@pytest.mark.parametrize("folder", ["cpu", "cuda"])
def test_kernels_read_the_policy_from_the_header(folder):
    """No kernel source defines a policy constant of its own (a second copy could drift)."""
    names = _header_constants().keys()
    for source in sorted((CSRC / folder).iterdir()):
        text = source.read_text()
        for name in names:
            redefined = re.search(rf"constexpr \w+ {name} =", text)
            assert not redefined, f"{source.name} redefines {name}"
    sources = " ".join(p.read_text() for p in (CSRC / folder).iterdir())
    assert '#include "solver_policy.h"' in sources


# ----------------------------------------------------------------------------- agreement

#: (d, kappa, dtype, zeros): spectra across the solver's paths (plain Lanczos for both
#: ends, shift-and-invert by Cholesky, LDL^T near the threshold, a null space).
AGREEMENT_CASES = [
    (64, 10.0, torch.float32, 0),
    (200, 1e4, torch.float32, 0),
    (150, 1e3, torch.float32, 20),
    (64, 10.0, torch.float64, 0),
    (300, 1e6, torch.float64, 0),
    (120, 1e8, torch.float64, 30),
]


def _case(d, kappa, dtype, zeros):
    ev = log_spectrum(d, kappa, d)
    ev[2 : 2 + zeros] = 0.0
    positive = ev[ev > 0]
    rtol = 0.1 * (positive.min() / positive.max()).item()
    return spd_from_spectrum(ev, d, dtype), max(
        rtol, 1e-4 if zeros and dtype == torch.float32 else 0
    )


@pytest.mark.parametrize("case", AGREEMENT_CASES, ids=str)
def test_backends_agree_on_eigenpairs_and_regularizers(case, request):
    S, rtol = _case(*case)
    dtype, d = S.dtype, S.shape[0]
    out = {}
    for name in ("native", "portable"):
        with condnum.backend(name):
            pairs = ops.extreme_eigh(S, 128, rtol, F.DEFAULT_TOL[dtype], None, None)
            lam_min, lam_max, u_min, u_max, err = pairs
            r_ill = ops.r_ill(S, lam_min, u_min, d)
            r_well = ops.r_well(S, lam_max, u_max, d)
            g = torch.tensor(0.5, dtype=dtype)
            grads = (
                ops._r_ill_backward(g, S, r_ill, lam_min, u_min, d),
                ops._r_well_backward(g, S, lam_max, u_max, d),
            )
            out[name] = (pairs, r_ill, r_well, grads)
    ref_min, ref_max = reference.float64_extremes(S, rtol)
    tol = eig_rtol(S, rtol)
    for name, ((lam_min, lam_max, _, _, err), *_rest) in out.items():
        assert err.dtype == torch.float64 and err.item() <= F.DEFAULT_TOL[dtype], name
        assert rel_err(lam_min.item(), ref_min) <= tol, name
        assert rel_err(lam_max.item(), ref_max) <= tol, name
    (n_pairs, n_ill, n_well, n_grads), (p_pairs, p_ill, p_well, p_grads) = out.values()
    # each backend within its tolerance of float64: within twice of each other
    for a, b in zip(n_pairs[:2], p_pairs[:2], strict=True):
        assert rel_err(a.item(), b.item()) <= 2 * tol
    for a, b in zip(n_pairs[2:4], p_pairs[2:4], strict=True):  # the same sign convention
        assert (a.double() @ b.double()).item() >= 1 - 1e-2
    assert rel_err(n_ill.item(), p_ill.item()) <= 2 * regularizer_rtol("r_ill", S, d, rtol)
    well_tol = 2 * regularizer_rtol("r_well", S, d) * abs(reference.r_well(S.double(), d).item())
    assert abs(n_well.item() - p_well.item()) <= well_tol
    # the same formula on each backend's (lam, u): compare on the native pairs
    with condnum.backend("portable"):
        lam_min, lam_max, u_min, u_max, _ = n_pairs
        g = torch.tensor(0.5, dtype=dtype)
        same_ill = ops._r_ill_backward(g, S, n_ill, lam_min, u_min, d)
        same_well = ops._r_well_backward(g, S, lam_max, u_max, d)
    for a, b in zip(n_grads, (same_ill, same_well), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=8 * torch.finfo(dtype).eps * a.abs().max())


@pytest.mark.parametrize("case", AGREEMENT_CASES, ids=str)
@pytest.mark.parametrize("side", [0.5, 2.0])  # the floor at half the bottom, or at twice it
def test_backends_agree_on_the_floor(case, side):
    """The floor relative to the smallest nonzero eigenvalue (a null space, when there is
    one, is always below it: saturated)."""
    S, range_rtol = _case(*case)
    ref_min, ref_max = reference.float64_extremes(S, range_rtol)
    rtol = side * ref_min / ref_max
    if not rtol > 100 * S.shape[0] * torch.finfo(S.dtype).eps:
        pytest.skip("a floor at rounding level: the spectrum does not decide the side")
    saturated = side > 1 or case[3] > 0
    out = {}
    for name in ("native", "portable"):
        with condnum.backend(name):
            out[name] = ops.floored_min(S, 128, rtol, F.DEFAULT_TOL[S.dtype], None, None)
    tol = eig_rtol(S, range_rtol)
    for name, (lam_min, lam_max, _, _, err, sat) in out.items():
        assert bool(sat) == saturated, name
        assert err.item() <= F.DEFAULT_TOL[S.dtype], name
        assert rel_err(lam_max.item(), ref_max) <= tol, name
        expected = rtol * lam_max.item() if saturated else ref_min
        assert rel_err(lam_min.item(), expected) <= tol, name
    native, portable = out.values()
    for a, b in zip(native[:2], portable[:2], strict=True):
        assert rel_err(a.item(), b.item()) <= 2 * tol
    if not saturated:  # u_min is lam_1's eigenvector, with the same sign convention
        assert (native[2].double() @ portable[2].double()).item() >= 1 - 1e-2


@pytest.mark.parametrize("panel", [None, 7, 300])  # the CPU's 128, a small one, one panel
@pytest.mark.parametrize("d", [1, 5, 127, 128, 129, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_portable_asymmetry_by_panels_equals_the_full_difference(d, dtype, panel):
    g = torch.Generator().manual_seed(d)
    S = torch.randn(d, d, generator=g, dtype=dtype)
    S = S + S.mT + 1e-3 * torch.randn(d, d, generator=g, dtype=dtype)
    assert max_asymmetry(S, panel) == (S - S.mT).abs().amax()
    S[d - 1, 0] = float("nan")
    assert max_asymmetry(S, panel).isnan()


@pytest.mark.parametrize("copy_to_host", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_portable_lanczos_steps_build_t_as_v_transpose_s_v(copy_to_host, dtype):
    """The host reads each step's alpha and beta in place on the CPU and from a copy on
    other devices: both reads (the copy forced here) give T = V^T S V."""
    g = torch.Generator().manual_seed(7)
    A = torch.randn(40, 40, generator=g, dtype=torch.float64)
    S = (A @ A.mT).to(dtype)
    lz = Lanczos(lambda v: torch.mv(S, v), 40, 25, dtype, S.device)
    if copy_to_host:
        lz._host = torch.empty_like(lz.coefficients)
        lz._host_view = lz._host.numpy()
    lz.start(pseudo_random_unit(40, dtype, S.device))
    while lz.step():
        pass
    m = lz.size
    V = lz.V[:m].double()
    T = V @ S.double() @ V.mT
    alpha, beta = torch.from_numpy(lz.alpha[:m]), torch.from_numpy(lz.beta[: m - 1])
    expected = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    scale = T.abs().max().item()
    torch.testing.assert_close(T, expected, rtol=0, atol=100 * torch.finfo(dtype).eps * scale)


@pytest.mark.parametrize(
    ("device", "dtype", "setting", "paired"),
    [
        ("cuda", torch.float32, ("legacy", "highest"), True),
        ("cuda", torch.float64, ("legacy", "high"), True),
        ("cuda", torch.float32, ("legacy", "high"), False),  # a block product could run in TF32
        ("cuda", torch.float32, ("cuda.matmul.fp32_precision", "tf32"), False),
        ("cuda", torch.float32, ("mkldnn.matmul.fp32_precision", "bf16"), True),  # the CPU's
        ("cpu", torch.float64, ("legacy", "highest"), False),  # MKL's block product is slower
    ],
)
def test_portable_pairs_a_run_and_its_check_where_that_is_exact_and_pays(
    device, dtype, setting, paired
):
    """The portable path's pair operator applies one block (two-column product, two
    right-hand sides) off the CPU, unless torch may use TF32 for that float32 matmul; else
    the single operator twice. Either way it returns (A va, A vb)."""
    A = torch.diag(torch.arange(1.0, 5.0, dtype=dtype))
    calls = []

    def apply(v):
        calls.append("apply")
        return A @ v

    def solve(X):
        calls.append("solve")
        return A @ X

    if setting[0] != "legacy" and not HAS_FP32_PRECISION:
        pytest.skip("torch < 2.9 has no per-backend fp32_precision settings")
    with fp32_matmul_precision(*setting):
        apply2 = pair_operator(apply, solve, torch.device(device), dtype)
    va, vb = torch.ones(4, dtype=dtype), torch.arange(4.0, dtype=dtype)
    wa, wb = apply2(va, vb)
    assert calls == (["solve"] if paired else ["apply", "apply"])
    assert torch.equal(wa, A @ va) and torch.equal(wb, A @ vb)
    assert wa.is_contiguous() and wb.is_contiguous()
