"""condnum.attack's attacker suite: each attacker, the views, the slowdowns, bad input, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from condnum.attack import (
    GRIDS,
    VIEWS,
    Adam,
    RMSprop,
    Run,
    Trace,
    Verdict,
    default_attackers,
    linear_probe_least_squares,
    make_problem,
    run_suite,
)
from condnum.cli import main
from condnum.immunize import immunize_linear, load_extractor, save_extractor

#: Attackers whose iterates commute with an orthogonal change of the feature basis
#: (everything but the diagonal preconditioners Adam and RMSprop).
ROTATION_EQUIVARIANT = {m[0].name for m in default_attackers()} - {Adam.name, RMSprop.name}
#: Adaptive methods with a constant learning rate hover near the minimiser; the others
#: converge to rounding.
W_RTOL = {Adam.name: 1e-3, RMSprop.name: 1e-3}
W_RTOL_DEFAULT = 1e-8


def well_conditioned(n: int = 80, d: int = 6, seed: int = 0):
    """Features with singular values in [1, 3] (kappa(Z^T Z) <= 9) and noisy targets."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    Z = (U * torch.linspace(1, 3, d, dtype=torch.float64)) @ V.T * n**0.5
    y = Z @ torch.randn(d, generator=g, dtype=torch.float64)
    return Z, y + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)


def run(attacker, problem, budget=3000, tol=1e-30):
    trace = Trace(problem, budget=budget, tol=tol)
    attacker.run(problem, trace)
    return trace


@pytest.mark.parametrize("members", default_attackers(), ids=lambda m: m[0].name)
def test_each_attacker_converges_to_the_closed_form(members):
    Z, y = well_conditioned()
    problem = make_problem(Z, y)
    W_star = torch.linalg.lstsq(Z, y[:, None]).solution  # independent of the problem's own
    traces = [run(attacker, problem, budget=400, tol=1e-20) for attacker in members]
    for trace in traces:
        assert trace.evals[-1] <= 400 and trace.evals == sorted(trace.evals)
    k = min(range(len(members)), key=lambda i: min(traces[i].excess))
    rtol = W_RTOL.get(members[k].name, W_RTOL_DEFAULT)
    err = float((traces[k].last - W_star).norm() / W_star.norm())
    assert err <= rtol, f"{members[k].label}: relative error {err:.2e} > {rtol:g}"


def test_line_search_gd_is_the_papers_attacker():
    """Same iterates as linear_probe_least_squares (exact line search), so the same losses."""
    Z, y = well_conditioned(d=5, seed=1)
    Z = Z * torch.tensor([1.0, 3.0, 10.0, 0.5, 2.0], dtype=torch.float64)  # kappa ~ 1e4
    trace = run(default_attackers()[0][0], make_problem(Z, y), budget=40)
    probe = linear_probe_least_squares(Z, y, steps=40)
    floor = float((Z @ probe.w_star - y).square().mean())
    expected = (probe.loss - floor) / (float(probe.loss[0]) - floor)
    torch.testing.assert_close(
        torch.tensor(trace.excess, dtype=torch.float64),
        expected.clamp(min=0),
        atol=1e-12,
        rtol=1e-7,
    )


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(Adam(0.05), torch.optim.Adam), (RMSprop(0.05), torch.optim.RMSprop)],
    ids=["Adam", "RMSprop"],
)
def test_adaptive_methods_follow_torch_optim(ours, theirs):
    Z, y = well_conditioned(seed=2)
    problem = make_problem(Z, y)
    trace = run(ours, problem, budget=25)
    W = problem.zeros()
    opt = theirs([W], lr=ours.lr)
    for _ in range(25):
        W.grad = problem.grad(W)
        opt.step()
    assert trace.excess[-1] == pytest.approx(problem.excess(W), rel=1e-9)


def test_views_standardize_and_whiten_the_training_features():
    Z, y = well_conditioned()
    Z = Z * torch.tensor([1e-3, 1.0, 1e2, 1.0, 5.0, 1.0], dtype=torch.float64) + 7.0
    std = make_problem(Z, y, view="standardized").A
    torch.testing.assert_close(std.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(std.std(0, correction=0), torch.ones(6, dtype=torch.float64))
    white = make_problem(Z, y, view="whitened").A
    torch.testing.assert_close(white.T @ white / Z.shape[0], torch.eye(6, dtype=torch.float64))
    cls = make_problem(Z, (y > 0).long(), view="released", classification=True)
    assert cls.A.shape == (80, 7) and bool((cls.A[:, -1] == 1).all()) and cls.Y.shape == (80, 2)


def test_slowdown_as_defined():
    def r(evals):
        return Run("x", evals, 0.0, None, ((0,), (1.0,)))

    assert Verdict("a", "released", r(10), r(50), 2000).slowdown == 5.0
    over = Verdict("a", "released", r(10), r(None), 2000)
    assert over.slowdown == 200.0 and over.lower_bound
    assert Verdict("a", "released", r(None), r(7), 2000).slowdown is None


def test_suite_slowdowns_follow_the_extractor():
    """A diagonal extractor is undone by standardization; an orthogonal one changes nothing
    for rotation-equivariant attackers; an ill-conditioning one slows gradient descent."""
    Z, y = well_conditioned(n=60, d=5, seed=3)
    attackers = [m for m in default_attackers() if m[0].name != Adam.name]  # keep it fast
    kw = dict(budget=400, attackers=attackers, progress=False)
    diag = torch.diag(torch.tensor([1e-3, 1.0, 30.0, 1.0, 1e2], dtype=torch.float64))
    res = run_suite(Z, y, diag, views=("released", "standardized"), **kw)
    gd = res.verdicts[("GD, exact line search", "released")]
    assert gd.lower_bound or gd.slowdown > 10
    for m in attackers:
        d = res.verdicts[(m[0].name, "standardized")]
        assert d.raw.evals is not None and d.slowdown == pytest.approx(1.0, abs=0.34), m[0].name
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(4),
                                       dtype=torch.float64))  # fmt: skip
    res = run_suite(Z, y, Q, views=("released", "whitened"), **kw)
    for (name, view), d in res.verdicts.items():
        if view == "whitened" or name in ROTATION_EQUIVARIANT:
            assert d.slowdown == pytest.approx(1.0, abs=0.34), (name, view)
    assert res.verdicts[("closed-form least squares", "released")].slowdown == 1.0
    payload = res.to_json()
    assert len(payload["verdicts"]) == 2 * len(attackers)
    assert "slowdown" in res.table() and set(GRIDS) and set(VIEWS) == {
        "released", "standardized", "whitened"
    }  # fmt: skip


def test_suite_bad_inputs():
    Z, y = well_conditioned(n=20, d=4)
    with pytest.raises(ValueError, match="expects 5 input features, the data has"):
        run_suite(Z, y, torch.eye(5, dtype=torch.float64), progress=False)
    with pytest.raises(ValueError, match="theta or bias"):
        run_suite(Z, y, torch.full((4, 4), float("nan")), progress=False)
    Zbad = Z.clone()
    Zbad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="Z_train contains NaN or Inf"):
        run_suite(Zbad, y, torch.eye(4, dtype=torch.float64), progress=False)
    with pytest.raises(ValueError, match="views must be among"):
        run_suite(Z, y, torch.eye(4, dtype=torch.float64), views=("pca",), progress=False)
    with pytest.raises(ValueError, match="single class"):
        make_problem(Z, torch.zeros(20, dtype=torch.long), classification=True)
    with pytest.raises(ValueError, match="budget >= 1"):
        Trace(make_problem(Z, y), budget=0, tol=0.01)


def test_extractor_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_extractor(tmp_path / "nowhere.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not an extractor file"):
        load_extractor(tmp_path / "junk.pt")


def test_cli_attack_on_digits_end_to_end(tmp_path, capsys):
    from condnum import datasets

    images, labels = datasets.load_digits()
    P = datasets.digit_pair_task(images, labels, 0, 1)
    H = datasets.digit_pair_task(images, labels, 3, 8)
    res = immunize_linear(P.X_train, H.X_train, P.y_train.double() * 2 - 1, steps=20)
    path = save_extractor(tmp_path / "extractor.pt", res.theta)
    out = tmp_path / "attack"
    argv = ["attack", "--extractor", str(path), "--task", "digits", "--pairs", "0-1:3-8",
            "--budget", "100", "--epochs", "20", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "harmful (3 vs 8)" in text and "closed-form least squares" in text
    assert "paper rule" in text and "relative rule" in text
    payload = json.loads((out / "attack_suite.json").read_text())
    assert (out / "attack_convergence.png").stat().st_size > 10_000
    for task in payload.values():
        assert task["classification"] and len(task["verdicts"]) == 3 * len(default_attackers())
        for v in task["verdicts"]:
            raw, imm = v["raw"]["evals"], v["immunized"]["evals"]
            if raw is not None and imm is not None:
                assert v["slowdown"] == pytest.approx(imm / raw)
            assert 0.0 <= v["immunized"]["test"] <= 1.0
    # the wrong extractor for the data, and a missing file: clear errors, exit status 2
    save_extractor(tmp_path / "wrong.pt", torch.eye(79, dtype=torch.float64))
    assert main(["attack", "--extractor", str(tmp_path / "wrong.pt"), "--task", "digits"]) == 2
    assert "expects 79 input features" in capsys.readouterr().err
    assert main(["attack", "--extractor", str(tmp_path / "none.pt"), "--task", "digits"]) == 2
    assert "none.pt" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [(300, 7), (300, 7, "rank-deficient"), (5, 9)])
def test_compressed_problem_matches_the_design(shape):
    """Loss, gradient and Hessian products through ``A = Q R`` equal the direct formulas on
    ``A`` (float64), for tall, rank-deficient tall and wide designs."""
    g = torch.Generator().manual_seed(len(shape))
    n, d = shape[:2]
    Z = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.logspace(0, 3, d)
    if len(shape) == 3:
        Z[:, -1] = Z[:, 0] - 2 * Z[:, 1]
    y = torch.randn(n, generator=g, dtype=torch.float64)
    p = make_problem(Z, y)
    assert p.R.shape == (min(n, d), d)
    W = torch.randn(d, 1, generator=g, dtype=torch.float64)
    A, Y = p.A, p.Y
    assert p.loss(W) == pytest.approx(float((A @ W - Y).square().sum()) / n, rel=1e-12)
    torch.testing.assert_close(p.grad(W), 2 * A.T @ (A @ W - Y) / n, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(p.hess(W), 2 * A.T @ (A @ W) / n, rtol=1e-10, atol=1e-10)
    assert p.excess(p.W_star) <= 1e-12 and p.excess(p.zeros()) == pytest.approx(1.0)
