"""R_ill + R_well on ViT/LLM-scale features as a fraction of a transformer block's step.

For each feature size d (768 ViT-B, 1024 ViT-L, 1280 ViT-H, 4096 LLM) and feature kind
(``pooled``: mean over tokens, Z (64, d); ``tokens``: every token, Z (64 T, d)), on the
random transformer stack of :mod:`condnum.deep.scale` (its ``setup``, as
examples/vit_scale.py):

  block_ms      one training step of the last block: forward + backward, batch of 64
                sequences of T tokens (the block's cost does not depend on the feature kind);
  ours_ms       R_well(Z_P) + R_ill(Z_H) forward + backward to Z with condnum.RWell/RIll
                (trace-normalised features, modules kept across calls: warm-started
                eigenvectors, alternating two batches as consecutive steps do);
  reference_ms  the same loss with condnum.reference (eigvalsh + autograd, as the authors
                wrote it) on the same, smaller Gram (Z^T Z or Z Z^T);
  *_frac        that time over block_ms.

T defaults to 197 on GPU (ViT-B/16, 224 px) and 16 on CPU (4 at d = 4096), so a CPU run
takes minutes; pooled fractions fall as T grows, token fractions barely move.

    python bench/bench_vit_scale.py --quick --threads 1
    python bench/bench_vit_scale.py --threads 1          # CPU, d = 768 1024 1280 4096
    python bench/bench_vit_scale.py --device cuda        # GPU, T = 197
"""

from __future__ import annotations

import warnings

import _harness as H
import torch

from condnum import reference as R
from condnum.deep import scale as V

FEATURES = ["pooled", "tokens"]


def _small_gram(Z: torch.Tensor) -> torch.Tensor:
    return Z.T @ Z if Z.shape[0] >= Z.shape[1] else Z @ Z.T


def reference_step(s: V.Setup) -> None:
    """``Setup.regularizers`` by the eigvalsh reference, forward + backward to Z."""
    Z_P, Z_H = s.next_features()
    loss = R.r_well(_small_gram(Z_P / Z_P.norm())) + R.r_ill(_small_gram(Z_H / Z_H.norm()))
    loss.backward()


def main() -> None:
    p = H.parser(__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=None, help="tokens per sequence T")
    p.add_argument("--features", nargs="*", default=FEATURES, choices=FEATURES)
    p.add_argument("--no-reference", action="store_true", help="skip the eigvalsh baseline")
    args = p.parse_args()
    device = H.setup(args)
    ds = args.d or ([256, 768] if args.quick else list(V.SIZES.values()))
    mrt = args.min_run_time or (0.05 if args.quick else 0.3)
    table = H.Table(
        args.name or "bench_vit_scale",
        ["d", "model", "features", "T", "N", "gram", "block_ms", "ours_ms", "ours_frac",
         "reference_ms", "reference_frac"],
        H.environment(device),
        key=["d", "features", "T"],
        compare=args.compare,
        time_column="ours_ms",
    )  # fmt: skip
    for d in ds:
        tokens = args.tokens or (4 if args.quick else V.default_tokens(d, device))
        block_ms = None
        for features in args.features:
            s = V.setup(d, tokens=tokens, features=features, device=device)
            if block_ms is None:
                block_ms = H.timeit(lambda: V.block_step(s), mrt)  # noqa: B023
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Lanczos budget warnings: timed as they are
                ours_ms = H.timeit(lambda: V.regularizer_step(s), mrt)  # noqa: B023
                ref_ms = (
                    float("nan") if args.no_reference else H.timeit(lambda: reference_step(s), mrt)  # noqa: B023
                )
            n = s.z_P[0].shape[0]
            table.add(
                d=d,
                model=next((k for k, v in V.SIZES.items() if v == d), "-"),
                features=features,
                T=tokens,
                N=n,
                gram=f"{min(n, d)}x{min(n, d)}",
                block_ms=block_ms,
                ours_ms=ours_ms,
                ours_frac=ours_ms / block_ms,
                reference_ms=ref_ms,
                reference_frac=ref_ms / block_ms,
            )
    table.save(args.name)


if __name__ == "__main__":
    main()
