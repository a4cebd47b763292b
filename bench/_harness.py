"""Shared benchmark harness: timing, matrices with a controlled spectrum, tables, JSON.

Every script in bench/ uses these pieces, so results are comparable across scripts:

- ``timeit``: ``torch.utils.benchmark.Timer.blocked_autorange`` (warm-up, CUDA sync,
  the thread count of the process), median in milliseconds;
- ``spectrum`` / ``matrix``: the one generator of test matrices (geometric, log-uniform
  or Wishart spectra, rotated by a seeded random orthogonal Q, built in float64);
- ``environment``: the machine block printed above every table and saved with it
  (CPU model, threads, torch/CUDA versions, device, git commit);
- ``Table``: prints rows as they arrive, saves ``bench/results/NAME.json`` and, with
  ``--compare OLD.json``, adds the time ratio old/new per row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

SPECTRA = ("geometric", "loguniform", "wishart")
#: The (kind, kappa) cases of the solver comparisons (bench_backends, bench_block_lanczos).
SOLVER_SPECTRA = [
    ("geometric", 1e2),
    ("geometric", 1e4),
    ("geometric", 1e6),
    ("loguniform", 1e4),
    ("wishart", float("nan")),
]


# --------------------------------------------------------------------------- arguments


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="default: cuda if available, else cpu",
    )
    p.add_argument("--quick", action="store_true", help="a few small cases (smoke run)")
    p.add_argument("--d", type=int, nargs="*", default=None, help="matrix sizes")
    p.add_argument("--dtype", choices=["float32", "float64"], nargs="*", default=None)
    p.add_argument(
        "--min-run-time",
        type=float,
        default=None,
        help="seconds of timing per measurement (blocked_autorange)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "--stat",
        choices=["median", "min"],
        default="median",
        help="statistic of the timed blocks (min resists noise from other jobs)",
    )
    p.add_argument(
        "--name",
        default=None,
        help="results file: a stem saved under bench/results/ (default: the script name), "
        "or a path ending in .json",
    )
    p.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="an earlier results JSON: print old/new time ratios",
    )
    return p


def setup(args: argparse.Namespace) -> torch.device:
    global STAT
    STAT = args.stat
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch.cuda.is_available() is False")
    # Full float32 products everywhere, the eigvalsh/eigh baselines included (environment()
    # records it): TF32 would make the baselines faster and less accurate than ours.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device(args.device)


def dtypes(args: argparse.Namespace) -> list[torch.dtype]:
    names = args.dtype or ["float32", "float64"]
    return [getattr(torch, n) for n in names]


def add_sample_sizes(p: argparse.ArgumentParser) -> None:
    """``--N``: feature-batch sizes for the benchmarks that start from features Z."""
    p.add_argument(
        "--N",
        type=int,
        nargs="*",
        default=None,
        help="numbers of samples; 0 means 2d (default: 2d and 4096)",
    )


def sample_sizes(args: argparse.Namespace, d: int) -> list[int]:
    """The N values to run at dimension d (``--N``; 0 stands for 2d)."""
    Ns = args.N if args.N is not None else ([0] if args.quick else [0, 4096])
    return sorted({n or 2 * d for n in Ns})


def feature_cases(
    args: argparse.Namespace, ds: Sequence[int], kind: str, kappa: float, device: torch.device
):
    """(d, N, dtype, Z) for each size, sample count (``--N``) and dtype asked for, with
    features Z from ``features(kind, N, d, kappa, dtype, device)``."""
    for d in ds:
        for N in sample_sizes(args, d):
            for dtype in dtypes(args):
                yield d, N, dtype, features(kind, N, d, kappa, dtype, device)


def matrix_cases(args: argparse.Namespace, ds: Sequence[int], spectra, device: torch.device):
    """(d, dtype, kind, kappa label, S) for each size, dtype (``--dtype``) and (kind, kappa)
    of ``spectra``, with S from ``matrix``; the label is "MP" for a Wishart matrix."""
    for d in ds:
        for dtype in dtypes(args):
            for kind, kappa in spectra:
                label = kappa if not math.isnan(kappa) else "MP"
                yield d, dtype, kind, label, matrix(kind, d, kappa, dtype, device)


# --------------------------------------------------------------------------- environment


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5)


def _git_commit() -> str:
    try:
        out = _git("rev-parse", "--short", "HEAD")
        commit = out.stdout.strip() if out.returncode == 0 else "none"
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return commit + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "stat": STAT,
        "commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        import condnum

        env["condnum_cuda"] = condnum.built_with_cuda()
        # the native CPU solvers' product kernel: "own" or "blas" (CONDNUM_MATVEC, else the CPU)
        env["matvec"] = torch.ops.condnum._matvec_choice()
    except ImportError as err:
        env["condnum"] = f"import failed: {err}"
    if torch.version.cuda:
        env["cuda"] = torch.version.cuda
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["tf32"] = torch.backends.cuda.matmul.allow_tf32
    return env


def print_environment(env: dict[str, Any]) -> None:
    print("# " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)


# --------------------------------------------------------------------------- timing


STAT = "median"


def timeit(fn: Callable[[], Any], min_run_time: float = 0.3) -> float:
    """Wall time of ``fn()`` in milliseconds (CUDA synchronised by the Timer): the median
    (or, with ``--stat min``, the minimum) over blocked_autorange's blocks."""
    fn()  # warm-up (and first-call allocations) outside the measurement
    t = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = t.blocked_autorange(min_run_time=min_run_time)
    return (min(m.times) if STAT == "min" else m.median) * 1e3


#: Rounds of alternate(): each callable is timed this many times, in turn with the others.
ROUNDS = 3


def alternate(
    fns: dict[str, Callable[[], Any]],
    min_run_time: float = 0.3,
    around: Callable[[str], contextlib.AbstractContextManager] | None = None,
) -> dict[str, float]:
    """``timeit`` of each callable, taken in turn over ROUNDS rounds (min_run_time split
    between them), so that a change of the machine's load weighs on all of them alike; each
    callable's time is the minimum of its rounds under ``--stat min``, else their median.
    ``around(name)``, if given, is entered while that callable is timed (outside the timing:
    a backend switch, say)."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            with around(name) if around else contextlib.nullcontext():
                samples[name].append(timeit(fn, min_run_time / ROUNDS))
    return {name: _combine(times) for name, times in samples.items()}


def _combine(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[0] if STAT == "min" else ordered[len(ordered) // 2]


# --------------------------------------------------------------------------- matrices


def spectrum(kind: str, d: int, kappa: float, seed: int = 0) -> torch.Tensor:
    """d eigenvalues in [1/kappa, 1] (float64, descending order not guaranteed).

    ``geometric``: 1/kappa ** (i/(d-1)), evenly spaced in log scale, both ends present;
    ``loguniform``: i.i.d. log-uniform in [1/kappa, 1] with both ends present;
    ``wishart``: not a closed-form spectrum (see ``matrix``); kappa is ignored.
    """
    if kind == "geometric":
        return kappa ** (-torch.arange(d, dtype=torch.float64) / max(d - 1, 1))
    if kind == "loguniform":
        g = torch.Generator().manual_seed(seed)
        ev = kappa ** (-torch.rand(d, generator=g, dtype=torch.float64))
        ev[0], ev[-1] = 1.0, 1.0 / kappa
        return ev
    raise ValueError(f"unknown spectrum {kind!r}; expected one of {SPECTRA}")


def random_orthogonal(d: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A seeded random orthogonal (d, d) float64 matrix, factorised on ``device``."""
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64).to(device))
    return Q * torch.sign(torch.diagonal(R))


def matrix(
    kind: str,
    d: int,
    kappa: float = 1e4,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    seed: int = 0,
    Q: torch.Tensor | None = None,
) -> torch.Tensor:
    """A symmetric PSD (d, d) test matrix, built in float64 on ``device`` and rounded to ``dtype``.

    ``geometric`` / ``loguniform``: ``Q diag(spectrum) Q^T`` with a seeded orthogonal Q;
    ``wishart``: ``Z^T Z / N`` with Gaussian Z of shape (2d, d) (Marchenko-Pastur
    spectrum in about [0.09, 2.9], kappa ~ 34, dense at both edges).
    """
    if kind == "wishart":
        g = torch.Generator().manual_seed(seed)
        Z = torch.randn(2 * d, d, generator=g, dtype=torch.float64).to(device)
        S = Z.T @ Z / (2 * d)
    else:
        Q = random_orthogonal(d, seed, device) if Q is None else Q.to(device)
        S = (Q * spectrum(kind, d, kappa, seed).to(device)) @ Q.T
    S = (S + S.T) / 2
    return S.to(dtype=dtype, device=device)


def features(
    kind: str,
    N: int,
    d: int,
    kappa: float = 1e4,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> torch.Tensor:
    """Features Z (N, d) whose Gram Z^T Z has the spectrum of ``matrix(kind, d, kappa)``
    (its nonzero part when N < d): Z = P diag(sqrt(ev)) Q^T with orthonormal P (N, r).
    ``wishart``: plain Gaussian Z / sqrt(N)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "wishart":
        Z = torch.randn(N, d, generator=g, dtype=torch.float64) / math.sqrt(N)
    else:
        r = min(N, d)
        ev = spectrum(kind, d, kappa, seed)[:r]
        P, _ = torch.linalg.qr(torch.randn(N, r, generator=g, dtype=torch.float64))
        Q = random_orthogonal(d, seed + 1)[:, :r]
        Z = (P * ev.sqrt()) @ Q.T
    return Z.to(dtype=dtype, device=device)


def perturbed(S: torch.Tensor, eps: float = 1e-3, seed: int = 1) -> torch.Tensor:
    """``M S M^T`` with ``M = I + eps E``, E symmetric Gaussian with ``||E||_2 ~ 1``.

    A "previous training step" matrix for warm-start measurements: PSD, each
    eigenvalue moves by a relative ~``2 eps``, eigenvectors rotate within clusters.
    """
    d = S.shape[0]
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(d, d, generator=g, dtype=torch.float64).to(S.device)
    E = (E + E.T) / (2 * math.sqrt(2 * d))  # semicircle law: ||E||_2 ~ 1
    M = torch.eye(d, dtype=torch.float64, device=S.device) + eps * E
    out = M @ S.detach().double() @ M.T
    return ((out + out.T) / 2).to(dtype=S.dtype, device=S.device)


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b != 0 else abs(a - b)


# --------------------------------------------------------------------------- tables


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-2:
            return f"{v:.1e}"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


class Table:
    """Rows of dicts: printed as they arrive (markdown), saved as JSON at the end."""

    def __init__(
        self,
        name: str,
        columns: Sequence[str],
        env: dict[str, Any],
        key: Sequence[str],
        compare: Path | None = None,
        time_column: str | None = None,
    ) -> None:
        self.name, self.columns, self.env, self.key = name, list(columns), env, list(key)
        self.rows: list[dict[str, Any]] = []
        self.time_column = time_column
        self.old: dict[tuple, dict[str, Any]] = {}
        if compare is not None:
            data = json.loads(Path(compare).read_text())
            self.old = {tuple(r.get(k) for k in self.key): r for r in data["rows"]}
            if time_column:
                self.columns.append(f"old/new {time_column}")
        print_environment(env)
        print("| " + " | ".join(self.columns) + " |")
        print("|" + "|".join("---" for _ in self.columns) + "|", flush=True)

    def add(self, **row: Any) -> None:
        if self.old and self.time_column:
            old = self.old.get(tuple(row.get(k) for k in self.key))
            ratio = float("nan")
            if old is not None and row.get(self.time_column):
                ratio = old[self.time_column] / row[self.time_column]
            row[f"old/new {self.time_column}"] = ratio
        self.rows.append(row)
        print("| " + " | ".join(_fmt(row.get(c, "")) for c in self.columns) + " |", flush=True)

    def save(self, stem: str | None = None, suffix: str = "") -> Path:
        """Writes the table to `stem` + `suffix` + .json: `stem` is a path ending in .json, or a
        stem under bench/results/ (default: the table's name)."""
        stem = stem or self.name
        if stem.endswith(".json"):
            path = Path(stem.removesuffix(".json") + suffix + ".json")
        else:
            path = RESULTS / f"{stem}{suffix}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {"name": self.name, "env": self.env, "rows": self.rows}, indent=1, default=str
            )
        )
        shown = path.resolve()
        print(
            f"# saved {shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown}",
            flush=True,
        )
        return path
