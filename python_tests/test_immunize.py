"""Immunization end to end on small data: kappas move the right way, the attacker slows
down on the harmful task and not on the primary one, overshoots are caught, bad input is
refused. scikit-learn's bundled digits (64 pixels) keep every test to a few seconds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from condnum import datasets, metrics
from condnum.immunize import (
    ImmunizationLoss,
    ImmunizationWarning,
    algorithm1,
    immunize_linear,
    immunize_linear_authors,
    initial_head,
    load_extractor,
    lstsq_head,
    opt_kappa,
    runs,
    save_extractor,
    train_immunized,
    whitening,
)

#: Immunization steps in the fast tests (as many as the demo: 64 x 64 matrices are cheap).
FAST_STEPS = 200
#: Attacker budget in the fast tests.
ATTACK_BUDGET = 800


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    return datasets.load_digits()


@pytest.fixture(scope="module")
def tasks(digits):
    """Primary 0-vs-1 (targets +-1), harmful 3-vs-8 (targets +-1)."""
    images, labels = digits
    P = datasets.digit_pair_task(images, labels, 0, 1)
    H = datasets.digit_pair_task(images, labels, 3, 8)
    return P, H, P.y_train.double() * 2 - 1, H.y_train.double() * 2 - 1


@pytest.fixture(scope="module")
def outcome(digits):
    images, labels = digits
    return runs.run_digit_pairs(
        images, labels, (0, 1), (3, 8), steps=FAST_STEPS, attack_steps=ATTACK_BUDGET
    )


@pytest.mark.parametrize("rule", ["paper", "relative"])
def test_kappa_ratios_move_the_right_way(outcome, rule):
    r = outcome.rir[rule]
    assert r.i > 1, f"harmful kappa should grow under the {rule} rule: (i) = {r.i}"
    assert r.ii < 1, f"primary kappa should not grow under the {rule} rule: (ii) = {r.ii}"
    assert r.rir > 10


def test_attacker_slower_on_harmful_not_on_primary(outcome):
    raw, imm = outcome.attacks["harmful"].steps
    assert raw is not None, "the raw harmful task should be learnable within the budget"
    assert imm is None or imm > 2 * raw, f"harmful: {raw} steps raw, {imm} immunized"
    raw, imm = outcome.attacks["primary"].steps
    assert raw is not None and imm is not None and imm <= raw, f"primary: {raw} -> {imm}"


def test_primary_model_is_the_plain_fit(tasks):
    """The head is transported through every step: predictions equal the plain LS fit's."""
    P, H, y_P, _ = tasks
    res = immunize_linear(P.X_train, H.X_train, y_P, steps=FAST_STEPS)
    beta, c = lstsq_head(P.X_train, y_P)
    torch.testing.assert_close(res.predict(P.X_test), P.X_test @ beta + c, rtol=1e-6, atol=1e-6)
    assert res.history["kappa_H"][-1] > res.history["kappa_H"][0]


def test_identity_start_is_the_papers_algorithm(tasks):
    """From theta_0 = I the balanced steps alone raise kappa_H and lower kappa_P."""
    P, H, y_P, _ = tasks
    res = immunize_linear(P.X_train, H.X_train, y_P, steps=FAST_STEPS, init="identity")
    r = runs.measure(P.X_train, H.X_train, res.theta)["relative"]
    assert r.i > 2 and r.ii < 1
    assert res.settings["init"] == "identity" and res.settings["iterations"] > 0
    assert all(lam >= 0 for lam in res.history["lam_h"])


def test_backends_agree(tasks):
    P, H, y_P, _ = tasks
    a = immunize_linear(P.X_train, H.X_train, y_P, steps=5, init="identity", backend="condnum")
    b = immunize_linear(P.X_train, H.X_train, y_P, steps=5, init="identity", backend="reference")
    torch.testing.assert_close(a.theta, b.theta, rtol=1e-5, atol=1e-8)


def test_r_ill_only_inflates_the_primary(tasks):
    """The paper's ablation: without R_well the primary's kappa grows too."""
    P, H, y_P, _ = tasks
    res = immunize_linear(P.X_train, H.X_train, y_P, steps=FAST_STEPS, init="identity", lam_p=0)
    r = runs.measure(P.X_train, H.X_train, res.theta)["relative"]
    assert r.i > 1 and r.ii > 1


def test_huge_step_is_caught_and_reported(tasks):
    """Algorithm 1 as printed with an absurd step: no NaN, the user is warned."""
    P, H, y_P, _ = tasks
    with pytest.warns(ImmunizationWarning, match="overshooting"):
        res = algorithm1(P.X_train, H.X_train, y_P, steps=5, lr=1e12, lam_h=1e12)
    assert bool(torch.isfinite(res.theta).all()) and bool(torch.isfinite(res.omega).all())
    assert any(e.severe for e in res.events)
    assert all(math.isfinite(k) for k in res.history["kappa_H"])


def test_balanced_backtracks_a_huge_step(tasks):
    P, H, y_P, _ = tasks
    res = immunize_linear(P.X_train, H.X_train, y_P, steps=5, step_size=50.0, max_step=50.0)
    assert res.events, "a relative step of 50 must be rejected at least once"
    assert bool(torch.isfinite(res.theta).all())
    assert res.history["step"][-1] < 50.0


def test_train_immunized_survives_a_huge_learning_rate(tasks):
    P, H, _, _ = tasks
    torch.manual_seed(0)
    ext, head = nn.Linear(64, 16).double(), nn.Linear(16, 2).double()
    primary = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(P.X_train, P.y_train), batch_size=64
    )
    harmful = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(H.X_train), batch_size=64)
    opt = torch.optim.SGD([*ext.parameters(), *head.parameters()], lr=1e30)
    with pytest.warns(ImmunizationWarning):
        res = train_immunized(
            ext, head, primary, harmful, task_loss=nn.functional.cross_entropy,
            optimizer=opt, epochs=2, progress=False,
        )  # fmt: skip
    assert res.events
    assert all(bool(torch.isfinite(p).all()) for p in [*ext.parameters(), *head.parameters()])
    assert opt.param_groups[0]["lr"] < 1e30


def test_train_immunized_raises_harmful_kappa(tasks):
    P, H, _, _ = tasks
    torch.manual_seed(0)
    ext, head = nn.Linear(64, 32).double(), nn.Linear(32, 2).double()
    ext0 = nn.Linear(64, 32).double()
    ext0.load_state_dict(ext.state_dict())
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(P.X_train, P.y_train), batch_size=64, shuffle=True
    )
    harmful = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(H.X_train), batch_size=64)
    opt = torch.optim.SGD([*ext.parameters(), *head.parameters()], lr=1e-2, momentum=0.9)
    res = train_immunized(
        ext, head, loader, harmful, task_loss=nn.functional.cross_entropy, optimizer=opt,
        epochs=8, progress=False,
    )  # fmt: skip
    assert not res.events
    with torch.no_grad():
        k0, k1 = (metrics.kappa_features(e(H.X_train), "relative") for e in (ext0, ext))
    assert k1 > k0
    assert res.history["task"][-1] < res.history["task"][0]


def test_auto_balance_matches_gradient_norms():
    torch.manual_seed(0)
    Z_P = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    Z_H = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    task = (Z_P.sum(1) - 1).square().mean()
    loss = ImmunizationLoss(lam_p=2.0, lam_h=3.0)
    loss(task, Z_P, Z_H)
    g_task = torch.autograd.grad(task, Z_P, retain_graph=True)[0].norm()
    g_well = torch.autograd.grad(loss.r_well(Z_P), Z_P)[0].norm()
    g_ill = torch.autograd.grad(loss.r_ill(Z_H), Z_H)[0].norm()
    assert float(loss.last["lam_p"] * g_well) == pytest.approx(2.0 * g_task.item(), rel=1e-6)
    assert float(loss.last["lam_h"] * g_ill) == pytest.approx(3.0 * g_task.item(), rel=1e-6)


def test_authors_mode_is_affine_and_seeded(tasks):
    P, H, y_P, _ = tasks
    a = immunize_linear_authors(P.X_train, H.X_train, y_P, epochs=2, seed=3)
    b = immunize_linear_authors(P.X_train, H.X_train, y_P, epochs=2, seed=3)
    assert a.bias is not None and a.bias.shape == (64,) and a.theta.shape == (64, 64)
    torch.testing.assert_close(a.theta, b.theta)
    assert bool(torch.isfinite(a.theta).all())


def test_opt_kappa_raises_kappa_h_and_lowers_the_merit(tasks):
    """Opt kappa descends ``log kappa_P - log kappa_H``: over its steps kappa_H rises and
    that merit falls (the history records the kappas before each step)."""
    P, H, y_P, _ = tasks
    steps = 10
    res = opt_kappa(P.X_train, H.X_train, y_P, steps=steps, init="identity")
    kappa_P, kappa_H = res.history["kappa_P"], res.history["kappa_H"]
    assert len(kappa_H) == steps and bool(torch.isfinite(res.theta).all())
    merit = [math.log(p) - math.log(h) for p, h in zip(kappa_P, kappa_H, strict=True)]
    assert kappa_H[-1] > kappa_H[0]
    assert merit[-1] < merit[0]


def test_whitening_flattens_the_primary(tasks):
    P, _, _, _ = tasks
    K = P.X_train.T @ P.X_train
    ev = torch.linalg.eigvalsh(whitening(K, 1e-2).T @ K @ whitening(K, 1e-2))
    assert float(ev[-1]) < 1 and float(ev[ev > 0.5].numel()) >= 1
    lam = torch.linalg.eigvalsh(K)
    big = int((lam > 1e-2 * lam[-1]).sum())
    assert int((ev > 0.5).sum()) == big  # every direction above the ridge is ~1


def test_initial_head_falls_back_for_non_square(tasks):
    P, _, y_P, _ = tasks
    theta = torch.randn(64, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    omega, c = initial_head(P.X_train, y_P, theta)
    assert omega.shape == (10,) and c.ndim == 0


def test_extractor_roundtrip(tmp_path):
    theta, bias = torch.randn(5, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    path = save_extractor(tmp_path / "e" / "extractor.pt", theta, bias)
    t2, b2 = load_extractor(path)
    torch.testing.assert_close(t2, theta)
    torch.testing.assert_close(b2, bias)
    torch.save([1, 2], tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an extractor file"):
        load_extractor(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bias must be"):
        save_extractor(tmp_path / "x.pt", theta, bias[:2])


X = torch.randn(20, 4, dtype=torch.float64)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(X_P=X[:, 0], X_H=X), "X_P must be a non-empty"),
        (dict(X_P=X, X_H=X[:, :3]), "same number of columns"),
        (dict(X_P=X, X_H=X, y_P=torch.ones(19)), "y_P must have shape"),
        (dict(X_P=X, X_H=X, y_P=torch.ones(20)), "one class"),
        (dict(X_P=X.clone().fill_(float("nan")), X_H=X), "NaN or Inf"),
        (dict(X_P=torch.zeros(20, 4), X_H=X), "all zeros"),
        (dict(X_P=X.long(), X_H=X), "floating point"),
        (dict(X_P=X, X_H=X, lam_p=0, lam_h=0), "not both 0"),
        (dict(X_P=X, X_H=X, init=torch.eye(3)), "init theta must be"),
        (dict(X_P=X, X_H=X, init="nope"), "init must be"),
        (dict(X_P=X, X_H=X, step_size=1.0, max_step=0.5), "step_size <= max_step"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        immunize_linear(steps=1, **kwargs)


def test_loss_rejects_mismatched_features():
    loss = ImmunizationLoss()
    with pytest.raises(ValueError, match="features"):
        loss(torch.zeros(()), torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="scalar"):
        loss(torch.zeros(2), torch.randn(5, 3), torch.randn(5, 3))


def test_one_class_digit_task_is_refused(digits):
    images, labels = digits
    with pytest.raises(ValueError):
        datasets.digit_pair_task(images, labels, 3, 3)


@pytest.mark.data
def test_house_prices_bar_fast(data_dir):
    """A short Algorithm 1 run on the real data already clears the paper's RIR with the
    primary kept."""
    pair = datasets.load_house_prices(data_dir / "house_prices" / "train.csv")
    method = "hardened: the above + orthogonal mix"  # Algorithm 1 + mix, by name
    o = runs.run_house_prices(pair, method, steps=40, attack_steps=200)
    assert o.result.settings["steps"] == 40
    for rule in ("paper", "relative"):
        assert o.rir[rule].rir >= 356.2 and o.rir[rule].ii <= 1, rule
    assert o.primary["test_loss_ratio"] <= 1.1
