"""condnum.attack: the bad actor's linear probes on frozen features."""

from __future__ import annotations

import math

import pytest
import torch

from condnum.attack import linear_probe_classifier, linear_probe_least_squares


def features_with_kappa(kappa: float, n: int = 60, d: int = 10, seed: int = 0) -> torch.Tensor:
    """Z = U diag(s) V^T with log-spaced singular values, so kappa(Z^T Z) = kappa."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -0.5 * math.log10(kappa), d, dtype=torch.float64)
    return U @ torch.diag(s) @ V.T


def targets(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------ least squares


def test_steps_to_tolerance_grow_with_kappa():
    y = targets(60)
    steps = []
    for kappa in (10.0, 100.0, 1000.0):
        res = linear_probe_least_squares(features_with_kappa(kappa), y, steps=20000, tol=1e-8)
        assert res.kappa == pytest.approx(kappa, rel=1e-8)
        assert res.steps_to_tol is not None
        steps.append(res.steps_to_tol)
    assert steps[0] < steps[1] < steps[2]
    assert steps[2] > 5 * steps[0]


def test_norm_ratio_monotone_and_within_the_kantorovich_bound():
    kappa = 200.0
    res = linear_probe_least_squares(features_with_kappa(kappa), targets(60), steps=400)
    r = res.norm_ratio
    assert r[0] == 1.0 and r.shape == (401,) and res.loss.shape == (401,)
    assert (r[1:] < r[:-1]).all()
    assert (res.loss[1:] <= res.loss[:-1]).all()
    # ||e_t||_H^2 <= q^(2t) ||e_0||_H^2 with q = (kappa - 1) / (kappa + 1), and the
    # Euclidean ratio is at most kappa times the H-norm ratio
    t = torch.arange(r.numel(), dtype=torch.float64)
    q = (kappa - 1) / (kappa + 1)
    assert (r <= kappa * q ** (2 * t) * (1 + 1e-9)).all()


def test_each_step_is_an_exact_line_search():
    """Exact line search makes consecutive gradients orthogonal: g_1 . g_0 = 0."""
    Z, y = features_with_kappa(300.0), targets(60)
    w0 = torch.randn(10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w1 = linear_probe_least_squares(Z, y, steps=1, w0=w0).w
    w2 = linear_probe_least_squares(Z, y, steps=2, w0=w0).w
    g0, g1, g2 = (Z.T @ (Z @ w - y) for w in (w0, w1, w2))
    assert abs(float(g1 @ g0)) < 1e-10 * float(g0 @ g0)
    assert abs(float(g2 @ g1)) < 1e-10 * float(g1 @ g1)
    # and the step is along -g0
    step = w1 - w0
    torch.testing.assert_close(step / step.norm(), -g0 / g0.norm())


def test_solution_recovered_full_rank():
    Z, y = features_with_kappa(20.0), targets(60)
    res = linear_probe_least_squares(Z, y, steps=2000, tol=1e-20)
    expected = torch.linalg.lstsq(Z, y[:, None]).solution[:, 0]
    torch.testing.assert_close(res.w_star, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.w, expected, rtol=1e-8, atol=1e-10)
    assert res.loss[-1] == pytest.approx(float((Z @ expected - y).square().mean()), rel=1e-10)


def test_rank_deficient_minimum_norm_and_range_error():
    g = torch.Generator().manual_seed(5)
    Z = torch.randn(5, 12, generator=g, dtype=torch.float64)  # N < d: rank 5
    y = targets(5)
    w0 = torch.randn(12, generator=g, dtype=torch.float64)
    res = linear_probe_least_squares(Z, y, steps=500, tol=1e-12, w0=w0)
    torch.testing.assert_close(res.w_star, torch.linalg.pinv(Z) @ y)
    assert res.steps_to_tol is not None  # the error in the row space vanishes ...
    P = torch.linalg.pinv(Z) @ Z  # ... while the null-space part of w0 never moves
    torch.testing.assert_close(res.w - P @ res.w, w0 - P @ w0)
    torch.testing.assert_close(Z @ res.w, y)


def test_budget_and_stop_at_tol():
    Z, y = features_with_kappa(1e4), targets(60)
    short = linear_probe_least_squares(Z, y, steps=5, tol=1e-10)
    assert short.steps_to_tol is None and short.steps == 5
    stop = linear_probe_least_squares(Z, y, steps=100000, tol=1e-3, stop_at_tol=True)
    assert stop.steps_to_tol == stop.steps
    assert stop.norm_ratio[-1] <= 1e-3 < stop.norm_ratio[-2]


def test_start_at_solution_and_zero_gradient():
    Z, y = features_with_kappa(5.0), targets(60)
    w_star = torch.linalg.lstsq(Z, y[:, None]).solution[:, 0]
    res = linear_probe_least_squares(Z, Z @ w_star, steps=10, w0=w_star)
    assert res.steps_to_tol == 0 and float(res.norm_ratio.max()) <= 1e-20


def test_float32_features_computed_in_float64():
    Z = features_with_kappa(50.0).float()
    res = linear_probe_least_squares(Z, targets(60).float(), steps=50)
    assert res.norm_ratio.dtype == torch.float64 and res.w.dtype == torch.float64


def test_least_squares_bad_input():
    Z, y = features_with_kappa(5.0), targets(60)
    with pytest.raises(ValueError, match=r"y must have shape \(60,\)"):
        linear_probe_least_squares(Z, y[:-1])
    with pytest.raises(ValueError, match=r"Z must be a non-empty \(N, d\) matrix"):
        linear_probe_least_squares(Z[0], y)
    bad = Z.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="Z contains NaN or Inf"):
        linear_probe_least_squares(bad, y)
    with pytest.raises(ValueError, match="tol > 0"):
        linear_probe_least_squares(Z, y, tol=0.0)
    with pytest.raises(ValueError, match=r"w0 must have shape \(10,\)"):
        linear_probe_least_squares(Z, y, w0=torch.zeros(3))
    with pytest.raises(ValueError, match="all zeros"):
        linear_probe_least_squares(torch.zeros(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match="floating point"):
        linear_probe_least_squares(torch.ones(4, 3, dtype=torch.long), torch.ones(4))


# ------------------------------------------------------------------ classifier


def blobs(n_per: int, centers: list[list[float]], seed: int, spread: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    X = torch.cat(
        [torch.tensor(c) + spread * torch.randn(n_per, len(c), generator=g) for c in centers]
    )
    y = torch.arange(len(centers)).repeat_interleave(n_per)
    return X.double(), y


def test_classifier_learns_separable_binary_task():
    X, y = blobs(50, [[-2.0, 0.0, 1.0], [2.0, 0.0, -1.0]], seed=0)
    Xt, yt = blobs(30, [[-2.0, 0.0, 1.0], [2.0, 0.0, -1.0]], seed=1)
    res = linear_probe_classifier(X, y, Xt, yt, epochs=50, lr=0.5)
    assert res.train_loss.shape == (50,) and res.test_accuracy.shape == (50,)
    assert (res.train_loss[1:] < res.train_loss[:-1]).all()
    assert float(res.test_accuracy[-1]) == 1.0 and float(res.train_accuracy[-1]) == 1.0
    assert res.weight.shape == (3, 1) and res.bias.shape == (1,)
    assert res.epochs_to_accuracy(1.0) is not None
    assert res.epochs_to_accuracy(1.0) <= 50


@pytest.mark.parametrize("n_classes", [2, 3])
def test_classifier_first_step_is_the_cross_entropy_gradient(n_classes):
    X, y = blobs(10, [[1.0, 2.0], [3.0, 0.5], [-1.0, 1.0]][:n_classes], seed=7)
    res = linear_probe_classifier(X, y, epochs=1, lr=0.3)
    outputs = 1 if n_classes == 2 else n_classes
    W = torch.zeros(2, outputs, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(outputs, dtype=torch.float64, requires_grad=True)
    logits = X @ W + b
    if n_classes == 2:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.double())
    else:
        loss = torch.nn.functional.cross_entropy(logits, y)
    gW, gb = torch.autograd.grad(loss, (W, b))
    torch.testing.assert_close(res.weight, -0.3 * gW)
    torch.testing.assert_close(res.bias, -0.3 * gb)


def test_classifier_needs_its_bias():
    """Classes on one side of the origin: only the intercept can separate them."""
    X = torch.linspace(1.0, 4.0, 40, dtype=torch.float64)[:, None]
    y = (X[:, 0] > 2.5).long()
    res = linear_probe_classifier(X, y, X, y, epochs=3000, lr=1.0)
    assert float(res.test_accuracy[-1]) >= 0.95 and float(res.bias[0]) < 0


def test_classifier_softmax_and_label_values():
    centers = [[3.0, 0.0], [-3.0, 3.0], [-3.0, -3.0]]
    X, y = blobs(40, centers, seed=2)
    Xt, yt = blobs(20, centers, seed=3)
    labels = torch.tensor([-5, 7, 11])  # any sorted distinct labels become classes 0..2
    res = linear_probe_classifier(X, labels[y], Xt, labels[yt], epochs=100, lr=0.5)
    assert res.classes.tolist() == [-5, 7, 11] and res.weight.shape == (2, 3)
    assert float(res.test_accuracy[-1]) >= 0.95
    pm = linear_probe_classifier(X[y < 2], 2 * y[y < 2] - 1, epochs=20, lr=0.5)  # +-1 labels
    assert pm.test_accuracy is None and float(pm.train_accuracy[-1]) == 1.0


def test_classifier_ill_conditioned_features_learn_slower():
    """The immunization premise: the same task behind a badly conditioned map is slower."""
    X, y = blobs(50, [[-1.0, 1.0], [1.0, -1.0]], seed=4, spread=0.5)
    squash = torch.tensor([[1.0, 0.0], [0.0, 1e-3]], dtype=torch.float64)
    fast = linear_probe_classifier(X, y, X, y, epochs=200, lr=0.5)
    slow = linear_probe_classifier(X @ squash, y, X @ squash, y, epochs=200, lr=0.5)
    assert float(slow.train_loss[-1]) > float(fast.train_loss[-1])


def test_classifier_minibatches_are_seeded():
    X, y = blobs(30, [[-1.0, 0.0], [1.0, 0.0]], seed=5)
    a = linear_probe_classifier(X, y, epochs=3, lr=0.1, batch_size=7, seed=1)
    b = linear_probe_classifier(X, y, epochs=3, lr=0.1, batch_size=7, seed=1)
    c = linear_probe_classifier(X, y, epochs=3, lr=0.1, batch_size=7, seed=2)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


def test_classifier_bad_input():
    X, y = blobs(10, [[-1.0, 0.0], [1.0, 0.0]], seed=6)
    with pytest.raises(ValueError, match="single class"):
        linear_probe_classifier(X, torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match=r"y_test has labels \[4\] not seen in y_train"):
        linear_probe_classifier(X, y, X[:2], torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="give both Z_test and y_test"):
        linear_probe_classifier(X, y, X)
    with pytest.raises(ValueError, match="Z_test has 3 features"):
        linear_probe_classifier(X, y, torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"y_train must have shape \(20,\)"):
        linear_probe_classifier(X, y[:5])
    with pytest.raises(ValueError, match="epochs > 0"):
        linear_probe_classifier(X, y, epochs=0)
    res = linear_probe_classifier(X, y, epochs=1)
    with pytest.raises(ValueError, match="no test set"):
        res.epochs_to_accuracy(0.5)
