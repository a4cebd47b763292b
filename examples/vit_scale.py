"""R_ill / R_well on ViT- and LLM-scale features: their cost next to a transformer block.

The paper immunizes the last block of a ViT-B. This builds a stack of
``torch.nn.TransformerEncoderLayer`` blocks with random weights (pre-norm, GELU MLP of
width 4d, d/64 heads, no dropout) at the feature sizes of ViT-B/L/H (d = 768, 1024, 1280)
and of an LLM's hidden state (d = 4096), attaches ``RWell`` to the last block's features
on a primary batch and ``RIll`` on a harmful batch, takes one immunization step (only the
last block trains, as in the paper), and times with ``torch.utils.benchmark``:

- block: one training step of the last block, forward + backward, on a batch of B = 64
  sequences of T tokens (the frozen earlier blocks run once, outside the timing);
- regularizers: ``R_well(S_P) + R_ill(S_H)``, ``S = Z^T Z / ||Z||_F^2`` (the trace-normalised
  Gram of examples/deep_immunization.py), forward + backward to the features, the modules
  kept across calls (warm-started eigenvectors) and the calls alternating between two
  batches, as consecutive training steps do;

and reports ``fraction = regularizers / block``. Features ``Z``:

- ``pooled``: the mean over tokens, Z (64, d), a ViT's image embedding. N = 64 < d, so the
  64 x 64 Gram ``Z Z^T`` is solved (the same nonzero spectrum as ``Z^T Z``), and ``k = N``:
  ``Z^T Z`` has only N nonzero eigenvalues, and with the default ``k = d`` the denominator
  ``D(S) = ||S||_F^2/(2k) - sigma_min^2/2`` of ``R_ill`` can be <= 0 (at d = 4096 it is);
- ``tokens``: every token, Z (64 T, d), per-token hidden states as in an LLM; the d x d
  ``Z^T Z`` is solved when 64 T >= d.

T defaults to 197 on a GPU (ViT-B/16 at 224 px) and, to keep a CPU run to minutes, to 16
on a CPU (4 at d = 4096). The block's cost grows with T and the pooled regularizers' does
not, so pooled fractions at small T overstate the cost.

Run:  python examples/vit_scale.py [--quick] [--d 768 1024] [--features pooled|tokens]
          [--tokens T] [--threads 1]
"""

from __future__ import annotations

import argparse
import math

import torch
from torch.utils import benchmark

from condnum.deep.scale import (
    SIZES,
    block_step,
    default_tokens,
    immunization_step,
    regularizer_step,
    setup,
)


def median_ms(fn, min_run_time: float) -> float:
    """Median wall time of ``fn()`` in ms (``blocked_autorange``, CUDA synchronised)."""
    fn()
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="d = 256 and 768 only, T = 4")
    p.add_argument("--d", type=int, nargs="*", default=None, help="feature sizes")
    p.add_argument("--tokens", type=int, default=None, help="tokens per sequence T")
    p.add_argument("--features", choices=["pooled", "tokens"], default="tokens")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = args.d or ([256, 768] if args.quick else list(SIZES.values()))
    cpu = f"{torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"# torch {torch.__version__}, {device} ({where}), features: {args.features}")
    print("| d | model | T | N | block ms | regularizers ms | fraction |")
    print("|---|---|---|---|---|---|---|")
    for d in sizes:
        tokens = args.tokens or (4 if args.quick else default_tokens(d, device))
        s = setup(d, tokens=tokens, features=args.features, device=device)
        opt = torch.optim.SGD(s.block.parameters(), lr=1e-3, momentum=0.9)
        if not math.isfinite(immunization_step(s, opt, lam=1e-3)):
            raise RuntimeError(f"d = {d}: the immunization step's loss is not finite")
        mrt = 0.05 if args.quick else 0.2
        block_ms = median_ms(lambda: block_step(s), mrt)  # noqa: B023
        reg_ms = median_ms(lambda: regularizer_step(s), mrt)  # noqa: B023
        model = next((k for k, v in SIZES.items() if v == d), "-")
        print(
            f"| {d} | {model} | {tokens} | {s.z_P[0].shape[0]} | {block_ms:.1f} | {reg_ms:.2f} "
            f"| {100 * reg_ms / block_ms:.2f} % |",
            flush=True,
        )


if __name__ == "__main__":
    main()
