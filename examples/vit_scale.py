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
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import benchmark

import condnum

SIZES = {"ViT-B": 768, "ViT-L": 1024, "ViT-H": 1280, "LLM": 4096}
BATCH = 64


def transformer_stack(d: int, depth: int, device: torch.device) -> nn.Sequential:
    """``depth`` pre-norm transformer blocks of width d with random weights, float32."""
    return nn.Sequential(
        *(
            nn.TransformerEncoderLayer(
                d,
                d // 64,
                4 * d,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(depth)
        )
    ).to(device)


def default_tokens(d: int, device: torch.device) -> int:
    """Tokens per sequence T: 197 on GPU; 16 on CPU (4 for d > 1280)."""
    if device.type == "cuda":
        return 197
    return 16 if d <= 1280 else 4


def pool(h: torch.Tensor, features: str) -> torch.Tensor:
    """Block output (B, T, d) -> features Z: (B, d) mean over tokens, or (B T, d) tokens."""
    if features == "pooled":
        return h.mean(dim=1)
    if features == "tokens":
        return h.reshape(-1, h.shape[-1])
    raise ValueError(f"features must be 'pooled' or 'tokens', got {features!r}")


@dataclass
class Setup:
    """The last block, its frozen inputs and the regularizers for one feature size.

    ``h_P``, ``h_H``: two batches each of the earlier blocks' outputs (B, T, d), primary
    and harmful; ``z_P``, ``z_H``: the last block's features on them, detached.
    """

    features: str
    block: nn.Module
    h_P: list[torch.Tensor]
    h_H: list[torch.Tensor]
    z_P: list[torch.Tensor]
    z_H: list[torch.Tensor]
    r_well: condnum.RWell
    r_ill: condnum.RIll
    calls: int = 0

    def next_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Z_P, Z_H)`` requiring grad, from batch 0 and 1 in turn (consecutive steps)."""
        self.calls += 1
        i = self.calls % 2
        return self.z_P[i].detach().requires_grad_(), self.z_H[i].detach().requires_grad_()

    def regularizers(self, Z_P: torch.Tensor, Z_H: torch.Tensor) -> torch.Tensor:
        """``R_well(S_P) + R_ill(S_H)`` with ``S = Z^T Z / ||Z||_F^2`` (scale-free, see
        examples/deep_immunization.py)."""
        return self.r_well(Z_P / Z_P.norm()) + self.r_ill(Z_H / Z_H.norm())


def setup(
    d: int, *, tokens: int, features: str, device: torch.device, depth: int = 2, seed: int = 0
) -> Setup:
    """Random stack of ``depth`` blocks; primary tokens N(0, 1), harmful N(0.5, 2^2)."""
    torch.manual_seed(seed)
    *frozen, block = transformer_stack(d, depth, device)
    prefix = nn.Sequential(*frozen).requires_grad_(False)
    with torch.no_grad():
        h_P = [prefix(torch.randn(BATCH, tokens, d, device=device)) for _ in range(2)]
        h_H = [prefix(0.5 + 2 * torch.randn(BATCH, tokens, d, device=device)) for _ in range(2)]
        z_P, z_H = ([pool(block(h), features) for h in hs] for hs in (h_P, h_H))
    k = min(z_P[0].shape[0], d)  # the rank of Z^T Z: k = d > N can make D(S) <= 0
    r_well, r_ill = condnum.RWell(k).to(device), condnum.RIll(k).to(device)
    return Setup(features, block, h_P, h_H, z_P, z_H, r_well, r_ill)


def block_step(s: Setup) -> None:
    """One training step's forward + backward of the last block on one batch (B, T, d)."""
    s.block.zero_grad(set_to_none=True)
    s.block(s.h_P[0]).square().mean().backward()


def regularizer_step(s: Setup) -> torch.Tensor:
    """The regularizers' forward + backward to the features, alternating two batches."""
    loss = s.regularizers(*s.next_features())
    loss.backward()
    return loss.detach()


def immunization_step(s: Setup, opt: torch.optim.Optimizer, lam: float) -> float:
    """One training step of the last block: task + ``lam (R_well(S_P) + R_ill(S_H))``.

    The task is a stand-in, ``mean ||f(x_P)||^2`` (the weights are random): use yours.
    """
    opt.zero_grad(set_to_none=True)
    out_P, out_H = s.block(s.h_P[0]), s.block(s.h_H[0])
    loss = out_P.square().mean() + lam * s.regularizers(
        pool(out_P, s.features), pool(out_H, s.features)
    )
    loss.backward()
    opt.step()
    return float(loss.detach())


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
