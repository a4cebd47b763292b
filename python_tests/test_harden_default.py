"""Hardened defaults: ``harden`` (the digits and MNIST runs' ``hardening=``) and the
closed-form ``simultaneous_diagonalization`` extractor."""

from __future__ import annotations

import pytest
import scipy.linalg
import torch

from condnum import datasets
from condnum.attack import LBFGS, ConjugateGradient, LineSearchGD, run_suite
from condnum.cli import main
from condnum.immunize import (
    HARDENINGS,
    LinearImmunization,
    harden,
    lstsq_head,
    orthogonal_mix,
    random_orthogonal,
    runs,
    simultaneous_diagonalization,
)
from condnum.metrics import RULES, rir

F64 = torch.float64
#: Agreement of two float64 computations of the same kappa ratio (different rounding paths).
RATIO_RTOL = 1e-6


def two_sets(n: int = 150, d: int = 10, seed: int = 0):
    """Primary and harmful inputs with different covariances, and primary targets."""
    g = torch.Generator().manual_seed(seed)
    X_P = torch.randn(n, d, generator=g, dtype=F64) @ torch.randn(d, d, generator=g, dtype=F64)
    X_H = torch.randn(n, d, generator=g, dtype=F64) * torch.logspace(0, 2, d, dtype=F64)
    return X_P, X_H, X_P @ torch.randn(d, generator=g, dtype=F64)


def small_digits():
    """A small stand-in for MNIST: 400 'images' of 16 'pixels', 10 digits."""
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(400) % 10
    return torch.randn(400, 16, generator=g, dtype=F64) + labels[:, None].double(), labels


def test_harden_choices_and_bad_input():
    res = LinearImmunization(torch.eye(4, dtype=F64), omega=torch.ones(4, dtype=F64),
                             intercept=torch.tensor(0.0, dtype=F64))  # fmt: skip
    assert HARDENINGS == ("orthogonal-mix", "none")
    assert harden(res, "none") is res
    torch.testing.assert_close(harden(res, "orthogonal-mix", 3).theta, orthogonal_mix(res, 3).theta)
    with pytest.raises(ValueError, match="hardening must be one of"):
        harden(res, "rotate")


@pytest.fixture(scope="module")
def digit_runs():
    images, labels = datasets.load_digits()
    kw = dict(steps=40, attack_steps=50)
    return {h: runs.run_digit_pairs(images, labels, (0, 1), (3, 8), hardening=h, **kw)
            for h in HARDENINGS}  # fmt: skip


def test_digits_default_is_hardened_with_the_same_kappas_and_accuracy(digit_runs):
    mixed, plain = digit_runs["orthogonal-mix"], digit_runs["none"]
    Q = random_orthogonal(plain.result.theta.shape[1], 0)
    torch.testing.assert_close(mixed.result.theta, plain.result.theta @ Q)
    assert mixed.result.settings["orthogonal_mix_seed"] == 0
    for rule in RULES:
        assert mixed.rir[rule].rir == pytest.approx(plain.rir[rule].rir, rel=RATIO_RTOL)
        assert mixed.rir[rule].ii == pytest.approx(plain.rir[rule].ii, rel=RATIO_RTOL)
    assert mixed.primary == pytest.approx(plain.primary)


def test_mnist_pair_hardening_on_small_images():
    """run_mnist_pair on :func:`small_digits`."""
    images, labels = small_digits()
    out = {h: runs.run_mnist_pair(images, labels, 3, 8, steps=3, hardening=h, seed=2,
                                  backend="reference") for h in HARDENINGS}  # fmt: skip
    mixed, plain = out["orthogonal-mix"], out["none"]
    torch.testing.assert_close(mixed.result.theta, plain.result.theta @ random_orthogonal(16, 2))
    assert mixed.rir["paper"].rir == pytest.approx(plain.rir["paper"].rir, rel=RATIO_RTOL)
    assert mixed.primary["accuracy"] == pytest.approx(plain.primary["accuracy"], abs=1e-9)
    with pytest.raises(ValueError, match="hardening"):
        runs.run_mnist_pair(images, labels, 3, 8, steps=1, hardening="diagonal")


def test_cli_rejects_an_unknown_hardening(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["immunize", "mnist", "--out", str(tmp_path), "--hardening", "bogus"])
    assert "--hardening" in capsys.readouterr().err


def test_simultaneous_diagonalization_against_scipy():
    """theta^T K_P' theta = I and the spectrum of theta^T K_H' theta is the generalized
    spectrum of (K_H', K_P') from scipy's float64 solver."""
    X_P, X_H, y = two_sets()
    res = simultaneous_diagonalization(X_P, X_H, y, rtol=1e-8, seed=4)
    K_P, K_H = X_P.T @ X_P, X_H.T @ X_H
    rho = 1e-8 * float(K_P.trace()) / K_P.shape[0]
    eye = torch.eye(K_P.shape[0], dtype=F64)
    th = res.theta
    torch.testing.assert_close(th.T @ (K_P + rho * eye) @ th, eye, atol=1e-9, rtol=0)
    mu = scipy.linalg.eigh((K_H + rho * eye).numpy(), (K_P + rho * eye).numpy(), eigvals_only=True)
    got = torch.linalg.eigvalsh(th.T @ (K_H + rho * eye) @ th)
    torch.testing.assert_close(got, torch.from_numpy(mu), rtol=1e-8, atol=0)
    assert res.settings["mu_min"] == pytest.approx(mu[0], rel=1e-8)
    beta, c = lstsq_head(X_P, y)  # the primary model is the plain fit
    torch.testing.assert_close(res.predict(X_P), X_P @ beta + c, rtol=1e-8, atol=1e-8)


def test_simultaneous_diagonalization_keeps_the_primary_fast():
    """kappa(H_P) ~ 1: no attacker is slower on the primary task than on raw inputs."""
    X_P, X_H, y = two_sets(n=200, d=12, seed=3)
    res = simultaneous_diagonalization(X_P, X_H, y)
    r = rir(X_P, X_H, res.theta, rule="relative", backend="eigvalsh")
    assert r.ii < 1 and r.i > 10
    kw = dict(views=("released", "standardized"), progress=False, budget=500,
              attackers=[[LineSearchGD()], [LBFGS()], [ConjugateGradient()]])  # fmt: skip
    for v in run_suite(X_P, y, res.theta, **kw).verdicts.values():
        assert v.slowdown is not None and v.slowdown <= 1


@pytest.fixture(scope="module")
def house_prices():
    try:
        return datasets.load_house_prices()
    except FileNotFoundError as err:
        pytest.skip(f"House Prices data not available: {err}")


def test_simultaneous_diagonalization_on_house_prices(house_prices):
    """The bars it meets on the authors' data: primary test loss within 1 % of the plain
    fit, (ii) <= 1 and RIR >= 356.2 (paper's rule), (i) >= 10 (relative rule), and
    L-BFGS slowed >= 10x on the harmful task, on released and standardized features."""
    P, H = house_prices.primary, house_prices.harmful
    res = simultaneous_diagonalization(P.X_train, H.X_train, P.y_train)
    beta, c = lstsq_head(P.X_train, P.y_train)
    plain = float((P.X_test @ beta + c - P.y_test).square().mean())
    assert float((res.predict(P.X_test) - P.y_test).square().mean()) <= 1.01 * plain
    paper = rir(P.X_train, H.X_train, res.theta, rule="paper", backend="eigvalsh")
    assert paper.ii <= 1 and paper.rir >= 356.2
    assert rir(P.X_train, H.X_train, res.theta, rule="relative", backend="eigvalsh").i >= 10
    suite = run_suite(H.X_train, H.y_train, res.theta, attackers=[[LBFGS()]],
                      views=("released", "standardized"), progress=False)  # fmt: skip
    for v in suite.verdicts.values():
        assert v.lower_bound or v.slowdown >= 10


def _with_nan(X: torch.Tensor) -> torch.Tensor:
    X = X.clone()
    X[0, 0] = float("nan")
    return X


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda P, H, y: simultaneous_diagonalization(P[:, 0], H), "X_P must be"),
        (lambda P, H, y: simultaneous_diagonalization(P, H[:, :3]), "features"),
        (lambda P, H, y: simultaneous_diagonalization(P, _with_nan(H)), "X_H contains NaN"),
        (lambda P, H, y: simultaneous_diagonalization(P, H, rtol=0.0), "rtol"),
        (lambda P, H, y: simultaneous_diagonalization(0 * P, H), "zero"),
        (lambda P, H, y: simultaneous_diagonalization(P, H, y[:5]), "y_P"),
    ],
    ids=["1-D", "feature mismatch", "NaN", "rtol", "zero X_P", "y_P shape"],
)
def test_simultaneous_diagonalization_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(*two_sets(n=20, d=4))


def test_simultaneous_diagonalization_with_rank_deficient_covariances():
    """Fewer rows than features and an all-zero column (the House Prices and MNIST case):
    the ridge keeps ``K_P'`` invertible, so theta is finite and invertible,
    ``theta^T K_P' theta = I`` still holds, and the kappas stay measurable."""
    g = torch.Generator().manual_seed(5)
    d = 12
    X_P = torch.randn(7, d, generator=g, dtype=F64)  # rank 7 < 12
    X_H = torch.randn(30, d, generator=g, dtype=F64)
    X_P[:, 3] = X_H[:, 3] = 0.0  # a null direction shared by both covariances
    res = simultaneous_diagonalization(X_P, X_H, X_P @ torch.randn(d, generator=g, dtype=F64))
    K_P = X_P.T @ X_P
    ridged = K_P + 1e-6 * float(K_P.trace()) / d * torch.eye(d, dtype=F64)
    assert torch.isfinite(res.theta).all()
    torch.testing.assert_close(res.theta.T @ ridged @ res.theta, torch.eye(d, dtype=F64),
                               atol=1e-8, rtol=0)  # fmt: skip
    assert 0 < res.settings["mu_min"] <= res.settings["mu_max"] < float("inf")
    for rule in RULES:
        r = rir(X_P, X_H, res.theta, rule=rule, backend="eigvalsh")
        assert all(map(torch.isfinite, torch.tensor([r.i, r.ii, r.rir])))
        assert r.ii <= 1


def test_house_prices_default_is_simultaneous_diagonalization(house_prices, capsys):
    """The default House Prices method is the mixed closed-form extractor; the Algorithm 1
    methods stay available by name, and ``--help`` says why."""
    assert runs.DEFAULT_METHOD == "simultaneous diagonalization + orthogonal mix"
    algorithm1_methods = {
        "hardened: the above + orthogonal mix",
        "ours: whitening θ₀ + balanced Algorithm 1",
        "algorithm1 (printed, λ balanced at θ₀)",
    }
    assert algorithm1_methods <= runs.HOUSE_PRICES_METHODS.keys()
    P, H = house_prices.primary, house_prices.harmful
    o = runs.run_house_prices(house_prices, seed=2, attack_steps=20)
    ref = simultaneous_diagonalization(P.X_train, H.X_train, P.y_train, seed=2)
    torch.testing.assert_close(o.result.theta, ref.theta, rtol=0, atol=0)
    with pytest.raises(SystemExit):
        main(["immunize", "house-prices", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"Default: '{runs.DEFAULT_METHOD}'" in text and "L-BFGS" in text
    assert "'hardened: the above + orthogonal mix'" in text


def test_mnist_pair_simultaneous_diagonalization_on_small_images():
    """``method="simultaneous-diagonalization"`` is the closed-form extractor of the pair's
    digit sets, mixed with ``seed``; it refuses ``hardening="none"`` and unknown methods."""
    images, labels = small_digits()
    o = runs.run_mnist_pair(images, labels, 3, 8, method="simultaneous-diagonalization", seed=2)
    X_P, X_H = datasets.digit_pair_sets(images, labels, 3, 8)
    torch.testing.assert_close(o.result.theta, simultaneous_diagonalization(X_P, X_H, seed=2).theta,
                               rtol=0, atol=0)  # fmt: skip
    assert o.rir["paper"].rir > 1 and o.rir["paper"].ii <= 1
    assert o.primary["accuracy"] == pytest.approx(o.primary["plain_accuracy"], abs=0.02)
    with pytest.raises(ValueError, match="method must be one of"):
        runs.run_mnist_pair(images, labels, 3, 8, method="newton")
    with pytest.raises(ValueError, match="always applies the orthogonal mix"):
        runs.run_mnist_pair(images, labels, 3, 8, method="simultaneous-diagonalization",
                            hardening="none")  # fmt: skip


def test_cli_mnist_method_choices(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["immunize", "mnist", "--out", str(tmp_path), "--method", "bogus"])
    assert "--method" in capsys.readouterr().err
    argv = ["immunize", "mnist", "--out", str(tmp_path), "--data", str(tmp_path / "none"),
            "--method", "simultaneous-diagonalization", "--hardening", "none"]  # fmt: skip
    assert main(argv) == 2  # refused before the (missing) data is read
    assert "always applies the orthogonal mix" in capsys.readouterr().err
