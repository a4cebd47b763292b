"""Smoke runs of the benchmark scripts (bench/): each runs its --quick cases with a tiny
timing budget, must exit 0, and must save a JSON whose rows carry the columns the
performance tables quote. Timings are not checked (performance is measured, never asserted)."""

from __future__ import annotations

import json
import math
import os
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
    (
        "bench_backends.py",
        ["--dtype", "float64"],
        ["d", "dtype", "op", "native_ms", "portable_ms", "ratio", "max_rel_diff", "steps"],
    ),
    ("bench_gram.py", ["--dtype", "float32"], ["N", "d", "gram_ms", "matmul_ms", "speedup"]),
    (
        "bench_block_products.py",
        ["--k", "2", "--row-panels"],
        ["d", "dtype", "k", "mv_ms", "cols_ms", "rows_ms", "best_over_mv", "panels_over_mv"],
    ),
    (
        "bench_cholesky_solve.py",
        ["--thread-counts", "1", "2"],
        ["d", "threads", "own_one_ms", "own_two_ms", "lapack_two_ms", "own_over_lapack"],
    ),
    (
        "bench_block_lanczos.py",
        ["--dtype", "float64", "--blocks", "1", "2"],
        ["d", "dtype", "steps", "passes", "passes_1", "err_1", "product_1", "est_1", "est_2"],
    ),
    (
        "bench_regularizers.py",
        ["--dtype", "float64", "--methods", "ours", "reference", "--parts"],
        ["N", "d", "method", "ms", "speedup", "value_err", "grad_err"],
    ),
    (
        "bench_hvp.py",
        ["--dtype", "float64"],
        ["N", "d", "dtype", "ours_ms", "reference_ms", "speedup", "hvp_err"],
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
        if script == "bench_eigh.py" and row["method"] in ("ours", "ours_top"):
            # the step-cost columns of the CPU kernel (timings: not compared)
            assert row["lz_step"] > 0 and row["steps"] >= 1 and row["step_floor"] > 0
            assert row["converged"] in ("yes", "no")
            # runs: the same steps split by Krylov run, x2 for paired steps
            # ("L37x2 L17 S44x2 S4": a paired step is two)
            runs = [
                (r[0], int(r[1:].removesuffix("x2")), r.endswith("x2")) for r in row["runs"].split()
            ]
            assert all(kind in "LS" and n >= 1 for kind, n, _ in runs), row["runs"]
            assert sum(n * (2 if pair else 1) for _, n, pair in runs) == row["steps"]
            assert runs[0][0] == "L"
        if script == "bench_block_lanczos.py":  # the block runs meet the default tol (1e-7)
            assert row["steps"] >= 1 and row["err_1"] < 1e-5 and row["err_2"] < 1e-5
            assert row["passes_1"] >= 1 and row["passes_2"] >= 1
            # a paired step is two steps and one pass over S
            assert row["steps"] / 2 <= row["passes"] <= row["steps"]
        if script == "bench_backends.py":  # both backends meet the default tol (1e-7)
            assert row["ratio"] > 0 and row["max_rel_diff"] < 1e-5
            assert row["torch_floor"] > 0
            assert row["steps"] >= 1 and math.isfinite(row["extra_us_per_step"])


def test_bench_eigh_converged_column_reads_the_solvers_err():
    """bench_eigh's converged column: "no" for a solve cut short by num_iters (d = 200,
    3 steps, default tol), "yes" for the same S at the default budget."""
    code = (
        "import torch, _harness as H, bench_eigh as B\n"
        "S = H.matrix('geometric', 200, 1e2, torch.float64)\n"
        "runs = [(n, rtol) for n in (3, 128) for rtol in (None, 1e-3)]\n"
        "print(*(B.converged(S, rtol, None, num_iters=n) for n, rtol in runs))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "bench", capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["no", "no", "yes", "yes"]


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


def test_gpu_benchmarks_run_on_the_cpu(tmp_path):
    """bench_gpu.py, the GPU check's benchmark part, at toy sizes on the CPU: every part
    runs, and its rows reach the merged JSON and the markdown summary."""
    cmd = [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--device", "cpu", "--quick"]
    proc = subprocess.run([*cmd, "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert data["env"]["device"] == "cpu"
    parts = data["parts"]
    assert set(parts) == {"eigh-64", "regularizers", "vit"}
    assert {row["method"] for row in parts["eigh-64"]["tables"]["main"]} == {
        "ours",
        "ours_warm",
        "ours_top",
        "eigvalsh",
        "eigh",
    }
    assert parts["regularizers"]["tables"]["_parts"]
    assert parts["vit"]["tables"]["main"][0]["ours_frac"] > 0
    md = (tmp_path / "bench_gpu.md").read_text()
    assert "TF32 is off" in md and "## eigh-64: ok" in md


GPU_CHECK = ["bash", str(ROOT / "tools" / "gpu_check.sh")]


def test_gpu_check_dry_run_validates_its_stages():
    proc = subprocess.run([*GPU_CHECK, "--dry-run"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in ("build", "tests_portable", "tests_native", "memcheck", "racecheck", "bench"):
        assert f"  {stage} " in proc.stdout
    assert "gpu_check --dry-run: ok" in proc.stdout


def test_gpu_check_without_a_gpu_says_so_quickly(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the check would run")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run([*GPU_CHECK, str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 2
    assert "gpu_check: no CUDA device" in proc.stdout
    assert not (tmp_path / "out").exists()  # nothing was run or written


def _junit(path: Path, tests: int, skipped: int, failures: int = 0) -> None:
    path.write_text(f'<testsuites><testsuite name="pytest" tests="{tests}" errors="0" '
                    f'failures="{failures}" skipped="{skipped}"/></testsuites>')  # fmt: skip


@pytest.mark.parametrize(
    ("native_skipped", "racecheck", "passed", "verified"),
    [
        (0, "passed", True, True),
        (5, "passed", False, False),
        (0, "timed out after 35 s", False, False),
        (0, "skipped: compute-sanitizer not found", True, False),
    ],
)
def test_gpu_check_report_verdicts(tmp_path, native_skipped, racecheck, passed, verified):
    """A correctness stage that failed, timed out or ran no test (all skipped) fails the
    check, a skipped one does not; the native kernels count as verified only when their
    stages all passed."""
    stages = [
        ("build", "correctness", "passed"),
        ("tests_portable", "correctness", "passed"),
        ("tests_native", "correctness", "passed"),
        ("memcheck", "correctness", "passed"),
        ("racecheck", "correctness", racecheck),
        ("bench", "benchmark", "failed (exit 1)"),
    ]
    (tmp_path / "stages.tsv").write_text("".join(f"{n}\t{k}\t{s}\t3\t60\n" for n, k, s in stages))
    _junit(tmp_path / "tests_portable.xml", 10, 2)
    _junit(tmp_path / "tests_native.xml", 5, native_skipped)
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_check_report.py"), "--stages",
           str(tmp_path / "stages.tsv"), "--junit", str(tmp_path), "--out", str(tmp_path),
           "--native-built", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == (0 if passed else 1), proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["passed"] is passed and report["native_cuda_verified"] is verified
    assert report["stages"][1]["tests"]["passed"] == 8
    assert "| bench | benchmark | failed (exit 1) |" in (tmp_path / "summary.md").read_text()
