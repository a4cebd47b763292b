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
    EIG_RTOL,
    VALUE_RTOL,
    log_spectrum,
    rel_err,
    spd_from_spectrum,
)

import condnum
from condnum import _policy, reference
from condnum import functional as F

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


def _cpp_constant(source: str, name: str) -> float:
    match = re.search(rf"constexpr \w+ {name} = ([0-9.e+-]+);", (CSRC / source).read_text())
    assert match, f"{name} not found in {source}"
    return float(match.group(1))


@pytest.mark.parametrize(
    ("source", "cpp", "python"),
    [
        ("cpu/extreme_eigh.cpp", "kFirstCheck", "FIRST_CHECK"),
        ("cpu/extreme_eigh.cpp", "kRoundingSlack", "ROUNDING_SLACK"),
        ("cpu/extreme_eigh.cpp", "kSkiRental", "SKI_RENTAL"),
        ("cpu/extreme_eigh.cpp", "kRateWindow", "RATE_WINDOW"),
        ("cpu/extreme_eigh.cpp", "kFloorSlack", "FLOOR_SLACK"),
    ],
)
def test_policy_constants_equal_the_cpu_kernels(source, cpp, python):
    assert _cpp_constant(source, cpp) == getattr(_policy, python)


def test_inline_policy_values_equal_the_cpu_kernels():
    """The values the C++ code writes inline, read from the sources."""
    checks_h = (CSRC / "cpu/checks.h").read_text()
    f32, f64 = re.search(
        r"is_same_v<scalar_t, float> \? ([0-9.e-]+) : ([0-9.e-]+)", checks_h
    ).groups()
    assert _policy.SYMMETRY_RTOL == {torch.float32: float(f32), torch.float64: float(f64)}
    checks = (CSRC / "cpu/checks.cpp").read_text()
    f32, f64 = re.search(r"limit = dtype == at::kFloat \? (\d+) : (\d+);", checks).groups()
    assert _policy.RANGE_EXPONENT_LIMIT == {torch.float32: int(f32), torch.float64: int(f64)}
    lanczos = (CSRC / "cpu/lanczos.cpp").read_text()
    assert float(re.search(r"b <= ([0-9.]+) \* std::sqrt", lanczos).group(1)) == _policy.BREAKDOWN
    eigh = (CSRC / "cpu/extreme_eigh.cpp").read_text()
    tau = re.search(r"std::max\(rtol, ([0-9.]+) \* d \* std::numeric_limits", eigh).group(1)
    assert float(tau) == _policy.TAU_D_EPS
    # R_ill's floor on D
    regularizers = (CSRC / "cpu/regularizers.cpp").read_text()
    floor = re.search(r"kIllFloor = ([0-9.]+);", regularizers)
    assert float(floor.group(1)) == _policy.ILL_FLOOR
    # the indefiniteness test of plain Lanczos: -sqrt(eps) |lam_max|
    assert "lowest >= -std::sqrt(eps) * std::abs(top.value)" in eigh
    assert _policy.indefinite_floor(torch.float32) == torch.finfo(torch.float32).eps ** 0.5


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
    for name, ((lam_min, lam_max, _, _, err), *_rest) in out.items():
        assert err.dtype == torch.float64 and err.item() <= F.DEFAULT_TOL[dtype], name
        assert rel_err(lam_min.item(), ref_min) <= EIG_RTOL[dtype], name
        assert rel_err(lam_max.item(), ref_max) <= EIG_RTOL[dtype], name
    (n_pairs, n_ill, n_well, n_grads), (p_pairs, p_ill, p_well, p_grads) = out.values()
    for a, b in zip(n_pairs[:2], p_pairs[:2], strict=True):
        assert rel_err(a.item(), b.item()) <= 2 * EIG_RTOL[dtype]
    for a, b in zip(n_pairs[2:4], p_pairs[2:4], strict=True):  # the same sign convention
        assert (a.double() @ b.double()).item() >= 1 - 1e-2
    assert rel_err(n_ill.item(), p_ill.item()) <= 2 * VALUE_RTOL[dtype]
    assert abs(n_well.item() - p_well.item()) <= 2 * VALUE_RTOL[dtype] * n_pairs[1].item() ** 2
    # the same formula on each backend's (lam, u): compare on the native pairs
    with condnum.backend("portable"):
        lam_min, lam_max, u_min, u_max, _ = n_pairs
        g = torch.tensor(0.5, dtype=dtype)
        same_ill = ops._r_ill_backward(g, S, n_ill, lam_min, u_min, d)
        same_well = ops._r_well_backward(g, S, lam_max, u_max, d)
    for a, b in zip(n_grads, (same_ill, same_well), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=8 * torch.finfo(dtype).eps * a.abs().max())
