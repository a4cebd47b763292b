"""Smoke runs of the benchmark scripts (bench/): each runs its --quick cases with a tiny
timing budget, must exit 0, and must save a JSON whose rows carry the columns the README
quotes. Timings are not checked (performance is measured, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# script, extra arguments, columns every row must have
SCRIPTS = [
    (
        "bench_eigh.py",
        ["--methods", "ours", "ours_top", "eigvalsh", "--spectra", "geometric:1e4"],
        ["d", "dtype", "method", "ms", "speedup", "err_min", "err_max"],
    ),
    ("bench_gram.py", ["--dtype", "float32"], ["N", "d", "gram_ms", "matmul_ms", "speedup"]),
    (
        "bench_regularizers.py",
        ["--dtype", "float64", "--methods", "ours", "reference", "--parts"],
        ["N", "d", "method", "ms", "speedup", "value_err", "grad_err"],
    ),
    ("bench_vit_scale.py", [], ["d", "N", "block_ms", "ours_ms", "ours_frac", "reference_ms"]),
    (
        "bench_training_loop.py",
        ["--dtype", "float32"],
        ["N", "d", "dtype", "steps", "ours_s", "reference_s", "speedup", "loss_err"],
    ),
]


def run(script: str, args: list[str], out: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / script), "--quick", "--min-run-time", "0.01"]
    cmd += ["--device", "cpu", "--name", str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"# saved {out}" in proc.stdout
    return json.loads(out.read_text())


@pytest.mark.parametrize(("script", "args", "columns"), SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_benchmark_script_runs_and_saves(tmp_path, script, args, columns):
    data = run(script, args, tmp_path / "result.json")
    assert data["env"]["device"] == "cpu" and data["env"]["cpu_count"] >= 1
    assert data["rows"], "no rows saved"
    for row in data["rows"]:
        for c in columns:
            assert c in row, (c, row)
        if "speedup" in row:
            assert row["speedup"] > 0
        if script == "bench_eigh.py" and row["method"] == "ours":
            assert row["lz_step"] > 0  # the step-cost column of the CPU kernel


def test_regularizer_parts_table(tmp_path):
    """--parts saves a second table next to the first: the floor and 3x-budget columns
    are derived from the timings in the same rows."""
    run("bench_regularizers.py", ["--dtype", "float32", "--parts"], tmp_path / "reg.json")
    parts = json.loads((tmp_path / "reg_parts.json").read_text())["rows"]
    assert parts
    for row in parts:
        gg = row["gram_ms"] + row["gemm_ms"]
        assert row["floor_speedup"] == pytest.approx(row["reference_ms"] / gg)
        assert row["budget_3x_ms"] == pytest.approx(row["reference_ms"] / 3 - gg)


def test_deep_step_benchmark_runs_and_saves(tmp_path):
    """The deep pipeline's step benchmark (needs timm and torchvision, like the pipeline)."""
    pytest.importorskip("torchvision", reason="the deep pipeline needs torchvision")
    pytest.importorskip("timm", reason="the deep pipeline needs timm")
    data = run("bench_deep_step.py", ["--threads", "1"], tmp_path / "deep.json")
    assert {row["arch"] for row in data["rows"]} == {"resnet18", "vit_b_16"}
    for row in data["rows"]:
        assert row["step_ms"] > 0 and row["reg_ms"] > 0
        assert row["reg_share"] == (row["step_ms"] - row["no_reg_ms"]) / row["step_ms"]
