"""The GPU check's benchmarks: condnum against torch.linalg on one device, in one run.

Each part runs one of the bench scripts in a subprocess under its own time limit (a part
that overruns is reported as timed out; the others still run), with TF32 off (_harness):

  eigh-D          bench_eigh.py at d = D: extreme_eigh cold (``ours``) and warm-started
                  (``ours_warm``), top_eigh (``ours_top``), against torch.linalg.eigvalsh
                  and eigh of the same matrix (portable backend, the CUDA default);
  eigh-D-native   the same at the smallest d with the native CUDA kernels;
  regularizers    bench_regularizers.py: R_ill + R_well forward + backward from features
                  Z (N = 4096, d = 768), cold and warm-started, against eigvalsh + autograd,
                  and the parts table (Gram, GEMM, eigen-solves timed alone);
  vit             bench_vit_scale.py: the regularizers' share of a ViT-B (d = 768) block's
                  training step at batch 64, pooled and token features.

The rows of all parts go to ``OUT/bench_gpu.json`` and a markdown rendering to
``OUT/bench_gpu.md``. ``--device cpu --quick`` runs the same parts at toy sizes (the smoke
test does, so the code path is exercised without a GPU).

    python bench/bench_gpu.py --out gpu_out                     # on a GPU, ~2 minutes
    python bench/bench_gpu.py --device cpu --quick --out /tmp/b  # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


@dataclass
class Part:
    """One bench script run: its name, arguments, backend and share of the time budget."""

    name: str
    script: str
    args: list[str]
    weight: float
    backend: str = "portable"
    tables: list[str] = field(default_factory=lambda: [""])  # saved suffixes (``--parts``)


def plan(device: str, quick: bool, native: bool) -> list[Part]:
    """The parts, sized for one H100 in about two minutes, or toy sizes with ``quick``.
    Weights: shares of the time budget, guesses of each part's seconds on an H100
    (startup about 5 s, then a few blocks of --min-run-time per method and matrix)."""
    eig_methods = ["--methods", "ours", "ours_warm", "ours_top", "eigvalsh", "eigh"]
    if quick:
        sizes = {64: ["geometric:1e4"]}
        reg = ["--d", "64", "--N", "256"]
        vit = ["--d", "64", "--tokens", "2", "--features", "pooled"]
    else:
        two = ["geometric:1e4", "loguniform:1e6"]
        sizes = {768: two, 2048: two, 4096: ["geometric:1e4"], 8192: ["geometric:1e4"]}
        reg = ["--d", "768", "--N", "4096"]
        vit = ["--d", "768"]
    parts = []
    for d, spectra in sizes.items():
        args = ["--d", str(d), "--spectra", *spectra, *eig_methods]
        if d < 4096:
            parts.append(Part(f"eigh-{d}", "bench_eigh.py", args, weight=10 + d / 512))
        else:  # one part per dtype: a float64 overrun keeps the float32 rows
            parts += [
                Part(f"eigh-{d}-{t}", "bench_eigh.py", [*args, "--dtype", t], weight=w * d / 1024)
                for t, w in (("float32", 2.0), ("float64", 3.0))
            ]
    smallest = min(sizes)
    if native and device == "cuda":
        parts.append(
            Part(
                f"eigh-{smallest}-native",
                "bench_eigh.py",
                ["--d", str(smallest), "--spectra", *sizes[smallest], *eig_methods],
                weight=10,
                backend="native",
            )
        )
    parts.append(
        Part(
            "regularizers",
            "bench_regularizers.py",
            [*reg, "--methods", "ours", "ours_module", "reference", "--parts"],
            weight=12,
            tables=["", "_parts"],
        )
    )
    parts.append(Part("vit", "bench_vit_scale.py", vit, weight=15))
    return parts


def run_part(part: Part, device: str, quick: bool, limit: float, work: Path, log) -> dict:
    """Runs one part; returns {status, seconds, tables: {suffix: rows}, env}."""
    stem = work / f"{part.name}.json"
    cmd = [sys.executable, str(BENCH / part.script), "--device", device, "--name", str(stem)]
    cmd += ["--quick", "--min-run-time", "0.01"] if quick else ["--min-run-time", "0.1"]
    cmd += part.args
    env = dict(os.environ, CONDNUM_BACKEND=part.backend, PYTHONUNBUFFERED="1")
    print(f"## {part.name} (backend {part.backend}, limit {limit:.0f} s): {' '.join(cmd)}",
          file=log, flush=True)  # fmt: skip
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {limit:.0f} s"
    out: dict[str, Any] = {
        "status": status,
        "seconds": time.monotonic() - start,
        "backend": part.backend,
        "tables": {},
    }
    for suffix in part.tables:
        path = work / f"{part.name}{suffix}.json"
        if path.exists():
            data = json.loads(path.read_text())
            out["tables"][suffix or "main"] = data["rows"]
            out["env"] = data["env"]
    return out


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"
    return str(v)


def markdown(results: dict[str, dict], env: dict[str, Any] | None) -> str:
    """Every part's tables as markdown, under the machine line."""
    lines = ["# condnum GPU benchmarks", ""]
    if env:
        keys = ["gpu", "device", "torch", "cuda", "cpu", "condnum_cuda", "tf32", "commit"]
        lines.append("Machine: " + ", ".join(f"{k}={env[k]}" for k in keys if k in env))
        lines.append("")
    lines.append(
        "TF32 is off for every product and eigensolve, ours and the torch.linalg baselines "
        "alike (torch.backends.cuda.matmul.allow_tf32 = False). `speedup` is the baseline's "
        "time over the method's in the same run."
    )
    for name, r in results.items():
        lines += ["", f"## {name}: {r['status']} ({r['seconds']:.0f} s, backend {r['backend']})"]
        for table, rows in r["tables"].items():
            if not rows:
                continue
            cols = list(rows[0])
            lines += ["", f"{table}:", ""] if table != "main" else [""]
            lines.append("| " + " | ".join(cols) + " |")
            lines.append("|" + "|".join("---" for _ in cols) + "|")
            lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--quick", action="store_true", help="toy sizes (smoke run)")
    p.add_argument("--out", type=Path, required=True, help="folder for bench_gpu.{json,md}")
    p.add_argument(
        "--budget", type=float, default=None, help="seconds for all parts (default 120, quick 900)"
    )
    p.add_argument("--only", nargs="*", default=None, help="run only these parts")
    args = p.parse_args()
    import torch  # after argparse: --help needs no torch

    import condnum

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu: --device cuda, but torch.cuda.is_available() is False")
    parts = plan(args.device, args.quick, condnum.built_with_cuda())
    if args.only is not None:
        parts = [part for part in parts if part.name in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    env = None
    budget = args.budget or (900.0 if args.quick else 120.0)
    deadline = time.monotonic() + budget
    with tempfile.TemporaryDirectory() as tmp:
        for i, part in enumerate(parts):
            left = deadline - time.monotonic()
            # a part's share of what is left: an early finish leaves more to the later ones
            limit = left * part.weight / sum(q.weight for q in parts[i:])
            if limit < 5:
                results[part.name] = {"status": "skipped (budget spent)", "seconds": 0.0,
                                      "backend": part.backend, "tables": {}}  # fmt: skip
                continue
            results[part.name] = run_part(
                part, args.device, args.quick, limit, Path(tmp), sys.stdout
            )
            env = env or results[part.name].get("env")
            print(f"# {part.name}: {results[part.name]['status']}", flush=True)
    (args.out / "bench_gpu.json").write_text(
        json.dumps({"env": env, "parts": results}, indent=1, default=str)
    )
    (args.out / "bench_gpu.md").write_text(markdown(results, env))
    print(f"# saved {args.out / 'bench_gpu.json'} and bench_gpu.md", flush=True)
    failed = [n for n, r in results.items() if r["status"] != "ok"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
