"""Reproduce the MNIST experiment (Fig. 2) of Zheng et al. (ICML 2025): 90 ordered digit pairs.

    python examples/mnist_pairs.py                       # all 90 pairs, our kernels
    python examples/mnist_pairs.py --compare-backends    # also the eigvalsh reference: timing
    python examples/mnist_pairs.py --quick               # 3 pairs, a minute or two

For an ordered pair (P, H) the primary set is every MNIST test-set image of digit P, the
harmful set every image of digit H (784 pixels, normalized as the authors' code does:
(p/255 - 0.1307)/0.3081; --pixels unit for p/255). A linear extractor theta (784 x 784)
is immunized (whitening start + balanced Algorithm 1) and measured: (i), (ii), RIR under
the paper's kappa rule and the relative rule, and the accuracy of a least-squares
P-vs-rest classifier on immunized features against raw pixels. Writes the ln RIR heatmap
(Fig. 2) and all numbers (JSON) to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from condnum import datasets
from condnum.immunize import plots, runs

PAPER_MEAN_RIR = 70.04
ALL_PAIRS = [(p, h) for p in range(10) for h in range(10) if p != h]
QUICK_PAIRS = [(3, 8), (1, 7), (4, 9)]


def run_all(images, labels, pairs, args, backend: str) -> tuple[dict[str, dict], float]:
    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    for p, h in tqdm(pairs, desc=f"MNIST pairs ({backend})"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            o = runs.run_mnist_pair(images, labels, p, h, steps=args.steps,
                                    whiten_rtol=args.whiten_rtol, backend=backend)  # fmt: skip
        rec = o.to_json()
        rec["warnings"] = [str(w.message) for w in caught]
        rows[f"{p}:{h}"] = rec
    return rows, time.perf_counter() - t0


def summarise(rows: dict[str, dict], rule: str) -> str:
    rir = [r["rules"][rule]["rir"] for r in rows.values()]
    ok = sum(r["rules"][rule]["rir"] > 1 and r["rules"][rule]["ii"] <= 1 for r in rows.values())
    i_lt1 = sum(r["rules"][rule]["i"] < 1 for r in rows.values())
    geo = math.exp(statistics.fmean(math.log(x) for x in rir))
    return (f"{rule:8s}: mean RIR {statistics.fmean(rir):.4g} (median {statistics.median(rir):.4g}"
            f", geometric mean {geo:.4g}, min {min(rir):.3g}); {ok}/{len(rows)} pairs with RIR > 1 "
            f"and (ii) <= 1; {i_lt1} pairs with (i) < 1")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="folder with t10k-*-idx*-ubyte[.gz]")
    ap.add_argument("--pairs", default="all", help="P:H,... or 'all' (90 ordered pairs)")
    ap.add_argument("--steps", type=int, default=10, help="balanced Algorithm 1 steps per pair")
    ap.add_argument("--whiten-rtol", type=float, default=1e-6)
    ap.add_argument(
        "--pixels",
        default="authors",
        choices=["authors", "unit"],
        help="authors: (p/255 - 0.1307)/0.3081, their transform (default); unit: p/255",
    )
    ap.add_argument("--backend", default="condnum", choices=["condnum", "reference"])
    ap.add_argument("--compare-backends", action="store_true",
                    help="run every pair with both backends, report both wall times")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="mnist_out")
    ap.add_argument("--quick", action="store_true", help=f"pairs {QUICK_PAIRS}")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        pairs = QUICK_PAIRS
    elif args.pairs == "all":
        pairs = ALL_PAIRS
    else:
        pairs = [tuple(map(int, item.split(":"))) for item in args.pairs.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = datasets.load_mnist(args.data, pixels=args.pixels)
    backends = ["condnum", "reference"] if args.compare_backends else [args.backend]
    print(f"MNIST: {len(pairs)} ordered pairs (full run: all 90), {args.steps} steps each, "
          f"whitening ridge {args.whiten_rtol:g}·λ_max, backends {backends}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip

    results, times = {}, {}
    for backend in backends:
        results[backend], times[backend] = run_all(images, labels, pairs, args, backend)
    rows = results[backends[0]]
    print(summarise(rows, "paper") + f"   (paper: mean RIR {PAPER_MEAN_RIR}, all 90 > 1)")
    print(summarise(rows, "relative"))
    acc = [r["primary"]["accuracy"] - r["primary"]["plain_accuracy"] for r in rows.values()]
    print(f"P-vs-rest accuracy, immunized minus raw: mean {statistics.fmean(acc):+.4f}, "
          f"worst {min(acc):+.4f}")  # fmt: skip
    immunize = {b: sum(r["seconds"] for r in results[b].values()) for b in backends}
    for backend in backends:
        print(f"wall time, {backend:9s}: {times[backend]:.1f} s in all "
              f"({times[backend] / len(pairs):.2f} s per pair), of which immunization "
              f"{immunize[backend]:.1f} s")  # fmt: skip
    if len(backends) == 2:
        ratio = immunize["reference"] / immunize["condnum"]
        print(f"reference / condnum: {times['reference'] / times['condnum']:.2f}x in all, "
              f"{ratio:.2f}x for the immunization")  # fmt: skip
    for rule in ("paper", "relative"):
        grid = torch.full((10, 10), math.nan, dtype=torch.float64)
        for key, r in rows.items():
            p, h = map(int, key.split(":"))
            grid[p, h] = r["rules"][rule]["rir"]
        plots.plot_rir_heatmap(grid, out / f"fig2_ln_rir_{rule}.png", title=f"ln RIR ({rule} rule)")
    payload = {"pairs": results, "wall_time_s": times, "immunization_s": immunize,
               "settings": vars(args)}  # fmt: skip
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {out}/fig2_ln_rir_paper.png, fig2_ln_rir_relative.png, results.json")


if __name__ == "__main__":
    main()
