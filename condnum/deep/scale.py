"""A random transformer stack at ViT and LLM feature sizes with the regularizers attached.

``depth`` pre-norm ``torch.nn.TransformerEncoderLayer`` blocks with random weights (GELU
MLP of width 4d, d/64 heads, no dropout) at the feature sizes of ViT-B/L/H (d = 768, 1024,
1280) and of an LLM's hidden state (d = 4096). ``RWell`` watches the last block's features
on a primary batch and ``RIll`` on a harmful batch, each on the trace-normalised Gram
``S = Z^T Z / ||Z||_F^2``. Features ``Z``: ``pooled`` (the mean over tokens, (B, d)) or
``tokens`` (every token, (B T, d)). Used to measure the regularizers' cost next to a block
(examples/vit_scale.py, bench/bench_vit_scale.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import condnum

__all__ = [
    "BATCH",
    "SIZES",
    "Setup",
    "block_step",
    "default_tokens",
    "immunization_step",
    "pool",
    "regularizer_step",
    "setup",
    "transformer_stack",
]

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
        """``R_well(S_P) + R_ill(S_H)`` with ``S = Z^T Z / ||Z||_F^2`` (scale-free)."""
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
