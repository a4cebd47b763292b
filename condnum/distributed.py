"""The global-batch Gram for data-parallel training.

Each rank holds features ``Z_r`` of its own samples. The regularizers need the Gram of
the global batch, ``S = sum_r Z_r^T Z_r``, so that kappa is estimated from every rank's
samples. ``all_reduce_gram`` sums the local Grams over the process group. Every rank then
holds the same ``S`` and the same loss ``R(S)``, so the backward is the identity: each
rank's ``dR/dS`` is already the global one, and ``dR/dZ_r = 2 Z_r G`` is exactly the
global loss's gradient w.r.t. that rank's rows (a plain differentiable all-reduce would
multiply it by the world size).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, S: torch.Tensor, group) -> torch.Tensor:
        S = S.clone()
        dist.all_reduce(S, op=dist.ReduceOp.SUM, group=group)
        return S

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def all_reduce_gram(S: torch.Tensor, group=None) -> torch.Tensor:
    """``sum_r S_r`` over ``group`` (default: the world), differentiable as described above."""
    return _AllReduceSum.apply(S, group)
