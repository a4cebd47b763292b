"""What the build registered, read from torch's dispatcher.

Every condnum op has a CPU kernel and, in a CUDA build (``condnum.built_with_cuda()``), a
CUDA kernel (``floored_min`` aside: the portable one serves it on CUDA): checked in the
dispatch table, so a CUDA build is verified on a machine
without a GPU. The fake (meta) kernels pass ``torch.library.opcheck`` on meta tensors,
where no device kernel runs. Importing condnum does not initialise CUDA. With no CUDA
toolkit in reach, CMake's configure step succeeds for CONDNUM_CUDA=OFF against any torch
and stops with its reason for CONDNUM_CUDA=ON.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import condnum

ops = torch.ops.condnum
ROOT = Path(__file__).resolve().parents[1]

#: Ops whose kernel does not depend on the device (a build flag, a setting, not a tensor op).
DEVICE_INDEPENDENT = {"condnum::_built_with_cuda", "condnum::_matvec_choice"}
#: The CPU solvers' own product, Gram-Schmidt and Cholesky-solve kernels, exposed for their
#: tests: CPU only, no autograd.
CPU_ONLY = {
    "condnum::_matvec",
    "condnum::_symmetric_matvec",
    "condnum::_gram_schmidt_pass",
    "condnum::_cholesky_solve",
}
#: Ops without a hand-written CUDA kernel: the portable implementation serves them on CUDA
#: under every backend (a CUDA kernel would compose the unverified CUDA solver's pieces).
PORTABLE_ON_CUDA = {"condnum::floored_min"}


def _all_ops() -> set[str]:
    return {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("condnum::")}


def _tensor_ops() -> list[str]:
    """The ops of every device: each has a CPU, CUDA (in a CUDA build) and fake kernel."""
    return sorted(_all_ops() - DEVICE_INDEPENDENT - CPU_ONLY)


def _meta_calls(dtype: torch.dtype) -> list[tuple[torch._ops.OpOverload, tuple]]:
    """One call of every tensor op on meta tensors: d = 6, N = 9, D = 5."""

    def t(*shape, grad=False):
        return torch.empty(shape, dtype=dtype, device="meta", requires_grad=grad)

    def eig():
        return t(), t(6)

    (lam_min, u_min), (lam_max, u_max) = eig(), eig()
    return [
        (ops.gram.default, (t(9, 6, grad=True),)),
        (ops.covariance.default, (t(5, 6, grad=True), t(5, 5))),
        (ops.extreme_eigh.default, (t(6, 6, grad=True), 32, 1e-6, 1e-6, None, None)),
        (ops.extreme_eigh.default, (t(6, 6), 32, 1e-6, 1e-6, t(6), t(6))),
        (ops.top_eigh.default, (t(6, 6, grad=True), 32, 1e-6, None)),
        (ops.floored_min.default, (t(6, 6), 32, 1e-6, 1e-6, t(6), t(6))),
        (ops.r_ill.default, (t(6, 6, grad=True), lam_min, u_min, 10)),
        (ops.r_well.default, (t(6, 6, grad=True), lam_max, u_max, 10)),
        (ops._r_ill_backward.default, (t(), t(6, 6), t(), lam_min, u_min, 10)),
        (ops._r_well_backward.default, (t(), t(6, 6), lam_max, u_max, 10)),
    ]


def test_every_op_has_a_cpu_kernel():
    names = sorted(_all_ops() - DEVICE_INDEPENDENT)
    assert names, "no condnum ops registered"
    missing = [n for n in names if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU")]
    assert not missing, f"ops without a CPU kernel: {missing}"


def test_every_op_has_a_cuda_kernel_in_a_cuda_build():
    if not condnum.built_with_cuda():
        pytest.skip("condnum was built without its CUDA kernels (CPU torch or CONDNUM_CUDA=OFF)")
    names = sorted(set(_tensor_ops()) - PORTABLE_ON_CUDA)
    missing = [n for n in names if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")]
    assert not missing, f"ops without a CUDA kernel: {missing}"
    with condnum.backend("native"):  # no portable override on the CUDA key
        for name in PORTABLE_ON_CUDA:
            assert not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")
            table = torch._C._dispatch_dump(name)
            assert "CompositeExplicitAutograd[alias]: registered at" in table
    assert "CUDA: registered at" in torch._C._dispatch_dump("condnum::extreme_eigh")


def test_meta_calls_cover_every_op():
    covered = {op._schema.name for op, _ in _meta_calls(torch.float32)}
    assert covered == set(_tensor_ops())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_on_meta(dtype):
    for op, args in _meta_calls(dtype):
        torch.library.opcheck(op, args)


def test_import_does_not_initialise_cuda():
    code = "import torch, condnum; assert not torch.cuda.is_initialized()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def _configure(build_dir: Path, cuda: str) -> subprocess.CompletedProcess:
    """CMake's configure step of this checkout with ``CONDNUM_CUDA=cuda``, for this Python's
    torch, where no CUDA toolkit can be found: ``CUDA_HOME`` points nowhere and PATH holds
    only this environment's tools (cmake, ninja) and the system's compilers."""
    tools = Path(sys.executable).parent
    if not (tools / "cmake").exists() or not (tools / "ninja").exists():
        pytest.skip("cmake and ninja are not installed beside this Python (tools/install.sh)")
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_PATH", "CUDACXX")}
    env |= {"CUDA_HOME": str(build_dir / "no-toolkit"), "PATH": f"{tools}:/usr/bin:/bin"}
    cmd = [tools / "cmake", "-S", ROOT, "-B", build_dir, "-G", "Ninja",
           f"-DPython_EXECUTABLE={sys.executable}", f"-DCONDNUM_CUDA={cuda}"]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_a_build_without_the_cuda_kernels_needs_no_cuda_toolkit(tmp_path):
    """CONDNUM_CUDA=OFF configures against any torch, a CUDA build included, without a
    toolkit: torch is then taken from Python, not from its CMake config."""
    out = _configure(tmp_path, "OFF")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "condnum: CUDA kernels OFF: condnum was asked for no CUDA kernels" in out.stdout


def test_cuda_on_without_what_it_needs_stops_at_configure_with_the_reason(tmp_path):
    out = _configure(tmp_path, "ON")
    assert out.returncode != 0
    reason = "torch is a CPU build" if torch.version.cuda is None else ""
    assert f"CONDNUM_CUDA=ON, but {reason}" in " ".join(out.stderr.split())
