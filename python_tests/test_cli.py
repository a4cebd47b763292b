"""The ``condnum`` command line: demo (no download), immunize house-prices / mnist, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from condnum.cli import main
from condnum.immunize import load_extractor

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_demo_quick_prints_table_and_writes_png(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RIR paper" in out and "0v1 → 3v8" in out and "harmful steps" in out
    png = tmp_path / "convergence.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--pairs", "1-2"],
        ["demo", "--pairs", "1-2-3:4-5"],
        ["immunize", "mnist", "--out", "x", "--pairs", "3:3"],
        ["immunize", "mnist", "--out", "x", "--pairs", "3-8"],
        ["immunize", "house-prices"],  # --out is required
        ["immunize"],
    ],
)
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope" / "train.csv"
    assert main(["immunize", "house-prices", "--data", str(missing), "--out", str(tmp_path)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_python_dash_m_help():
    proc = subprocess.run(
        [sys.executable, "-m", "condnum", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "demo" in proc.stdout and "immunize" in proc.stdout


@pytest.mark.data
def test_immunize_house_prices(data_dir, tmp_path):
    csv = data_dir / "house_prices" / "train.csv"
    argv = ["immunize", "house-prices", "--data", str(csv), "--out", str(tmp_path)]
    assert main([*argv, "--seed", "3", "--budget", "300"]) == 0
    theta, bias = load_extractor(tmp_path / "extractor.pt")
    assert theta.shape == (79, 79) and bias is None
    res = json.loads((tmp_path / "results.json").read_text())
    assert {"i", "ii", "rir", "primary", "settings", "rules"} <= res.keys()
    # the default is the closed-form simultaneous diagonalization, rotated with the seed
    assert res["seed"] == 3 and res["settings"]["method"] == "simultaneous diagonalization"
    assert res["settings"]["seed"] == 3
    assert set(res["rules"]) == {"paper", "relative"}
    assert res["primary"]["test_loss_ratio"] <= 1.1
    assert (tmp_path / "norm_ratio.png").exists()
    suite = res["attack_suite"]
    assert set(suite) == {"primary (LotArea)", "harmful (SalePrice)"}
    for task in suite.values():
        assert task["budget"] == 300 and "slowdown" in task["table"]
        assert {"paper", "relative"} <= task["kappa"]["immunized"].keys()
    assert (tmp_path / "attack_convergence.png").exists()


@pytest.mark.data
def test_immunize_mnist_pair(data_dir, tmp_path):
    argv = ["immunize", "mnist", "--data", str(data_dir / "mnist"), "--out", str(tmp_path)]
    assert main([*argv, "--pairs", "3:8", "--steps", "2"]) == 0
    theta, _ = load_extractor(tmp_path / "pair_3_8" / "extractor.pt")
    assert theta.shape == (784, 784)
    res = json.loads((tmp_path / "pair_3_8" / "results.json").read_text())
    assert res["rir"] > 1 and res["ii"] <= 1 and res["pair"] == [3, 8]
    assert "3:8" in json.loads((tmp_path / "summary.json").read_text())
