"""Calls every condnum op once per dtype on CUDA with the native kernels: the workload that
tools/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck).

Sizes are small (the sanitizer slows kernels 10-100x) but not trivial: d = 80 spans more
than one thread block of the Lanczos kernels and N = 200 more than one tile of the Gram.
Exits 1 when an op returns a non-finite value on a well-conditioned input.

    compute-sanitizer --tool memcheck python tools/gpu_sanitize_ops.py
"""

from __future__ import annotations

import sys

import torch

import condnum

N, D, K = 200, 80, 64


def run(dtype: torch.dtype) -> list[str]:
    """Every op once; returns the names of those whose output is not finite."""
    ops = torch.ops.condnum
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(N, D, generator=g, dtype=dtype).cuda()
    S = ops.gram(Z)
    theta = torch.randn(D, 8, generator=g, dtype=dtype).cuda()
    K_cov = (torch.eye(D, dtype=dtype) * 2.0).cuda()
    tol = 1e-4 if dtype == torch.float32 else 1e-7
    results = {"gram": S, "covariance": ops.covariance(theta, K_cov)}
    if dtype == torch.float32:  # half-precision features, accumulated in float32
        results["gram float16"] = ops.gram(Z.half())
        results["gram bfloat16"] = ops.gram(Z.bfloat16())
    lam_min, lam_max, u_min, u_max, err = ops.extreme_eigh(S, 128, 1e-6, tol, None, None)
    results["extreme_eigh"] = torch.stack([lam_min, lam_max, err.to(dtype)])
    results["extreme_eigh warm"] = ops.extreme_eigh(S, 128, 1e-6, tol, u_min, u_max)[1]
    results["top_eigh"] = ops.top_eigh(S, 128, tol, None)[0]
    r_ill = ops.r_ill(S, lam_min, u_min, K)
    results["r_ill"] = r_ill
    results["r_well"] = ops.r_well(S, lam_max, u_max, K)
    one = torch.ones((), dtype=dtype, device="cuda")
    results["_r_ill_backward"] = ops._r_ill_backward(one, S, r_ill, lam_min, u_min, K)
    results["_r_well_backward"] = ops._r_well_backward(one, S, lam_max, u_max, K)
    torch.cuda.synchronize()
    return [f"{name} ({dtype})" for name, t in results.items() if not torch.isfinite(t).all()]


def main() -> int:
    if not condnum.built_with_cuda():
        print("gpu_sanitize_ops: condnum was built without its CUDA kernels")
        return 1
    bad: list[str] = []
    with condnum.backend("native"):
        for dtype in (torch.float32, torch.float64):
            bad += run(dtype)
    if bad:
        print("gpu_sanitize_ops: non-finite results from " + ", ".join(bad))
        return 1
    print("gpu_sanitize_ops: every op ran once per dtype on CUDA (native)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
