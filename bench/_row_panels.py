"""A block product Vt @ S (= (S V)^T for a symmetric S) by row panels of S, one per torch
thread, for the CPU.

BLAS libraries thread a matrix-vector product well and products with a few vectors less
well; splitting S into one row panel per thread, each thread multiplying its panel by the
whole block, is how ``gram`` keeps its threads busy. torch has no per-thread dispatch from
Python, so the panels run in a small C++ extension (``at::parallel_for`` over the panels,
``at::mm_out`` on each), compiled by ``torch.utils.cpp_extension.load_inline`` on first use
(about a minute; cached by torch afterwards).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch.utils.cpp_extension import load_inline

_SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>

// Yt (k, d) = Vt (k, d) @ S (d, d): column panel p of Yt is Vt @ S[:, cols p], so each
// thread reads its own column panel of S (rows of n contiguous entries, leading dimension d;
// the same entries as row panel p, S being symmetric); the panels are taken by the intra-op
// threads, and each is one at::mm_out into its columns of Yt.
at::Tensor row_panel_product(const at::Tensor& S, const at::Tensor& Vt, int64_t panels) {
  const int64_t d = S.size(0);
  auto Yt = at::empty({Vt.size(0), d}, S.options());
  const int64_t rows = (d + panels - 1) / panels;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t r0 = p * rows, n = std::min(d, r0 + rows) - r0;
      if (n <= 0) continue;
      auto out = Yt.narrow(1, r0, n);
      at::mm_out(out, Vt, S.narrow(1, r0, n));
    }
  });
  return Yt;
}
"""


@lru_cache(maxsize=1)
def _extension():
    return load_inline(
        "condnum_bench_row_panels",
        cpp_sources=_SOURCE,
        functions=["row_panel_product"],
        extra_cflags=["-O2"],
    )


def row_panel_product(S: torch.Tensor, Vt: torch.Tensor) -> torch.Tensor:
    """Vt @ S (k, d) for a contiguous, symmetric CPU S (d, d) and Vt (k, d), one row panel
    of S per thread (its columns of the result)."""
    if S.device.type != "cpu":
        raise ValueError(f"row panels are a CPU product, got S on {S.device}")
    return _extension().row_panel_product(S, Vt.contiguous(), torch.get_num_threads())
