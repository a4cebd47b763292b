"""A user's own training loop with ``ImmunizationLoss``, run until immunization succeeds.

The loop is the one a new user writes: an MLP extractor on sklearn's 8x8 digits, primary
task digits 0-4, harmful inputs digits 5-9, SGD with momentum, 2,000 full-batch steps. In
every dtype (float32, float64, bf16 autocast), with the default ``rtol`` and ``rtol = 0``,
with automatic and fixed balancing, the run must finish with finite losses, raise the
harmful Gram's kappa 1000x (or to the target) and keep the primary accuracy.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.datasets import load_digits

import condnum
from condnum.immunize import ImmunizationLoss, train_immunized
from condnum.modules import NumericalRangeWarning

STEPS = 2000
#: kappa(Z_H^T Z_H) must rise by this factor, or reach this fraction of the target.
KAPPA_RISE, TARGET_FRACTION = 1e3, 0.5
#: Primary accuracy kept, relative to the same loop without the regularizers.
ACCURACY_KEPT = 0.98
#: Fixed weights on the trace-normalised (scale-free) regularizers, near what auto picks.
FIXED_LAMBDAS = (1e-3, 30.0)
#: Auto-balancing may move lam_H by at most this factor over the run.
LAMBDA_DRIFT = 1e3


#: Small matrices: one thread avoids oversubscription when the machine is shared.
pytestmark = pytest.mark.usefixtures("one_thread")


def digits(dtype: torch.dtype):
    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16, dtype=dtype), torch.tensor(y)
    return X, y, y < 5, y >= 5


def harmful_kappa(ext, X, H) -> float:
    """kappa of the harmful features' Gram, float64 eigvalsh, true smallest eigenvalue."""
    with torch.no_grad():
        Z = ext(X[H]).double()
    return condnum.reference.condition_number(Z.T @ Z, rtol=0).item()


def train(mode: str, rtol: float | None, balance: str | None):
    """The user's loop; ``balance=None`` trains the primary task alone."""
    torch.manual_seed(0)
    dtype = torch.float64 if mode == "float64" else torch.float32
    X, y, P, H = digits(dtype)
    ext = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)
    ).to(dtype)
    head = torch.nn.Linear(32, 5).to(dtype)
    opt = torch.optim.SGD([*ext.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    lam = FIXED_LAMBDAS if balance == "fixed" else (1.0, 1.0)
    crit = ImmunizationLoss(*lam, rtol=rtol, balance=balance or "auto", normalize=True)
    kappa0 = harmful_kappa(ext, X, H)
    history = []
    for _ in range(STEPS):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            zp, zh = ext(X[P]), ext(X[H])
            task = torch.nn.functional.cross_entropy(head(zp).float(), y[P])
        loss = task if balance is None else crit(task, zp, zh)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(dict(crit.last))
    with torch.no_grad():
        acc = (head(ext(X[P])).argmax(1) == y[P]).double().mean().item()
    return acc, kappa0, harmful_kappa(ext, X, H), history, crit


@pytest.fixture(scope="module")
def plain_accuracy():
    cache: dict[str, float] = {}

    def get(mode: str) -> float:
        if mode not in cache:
            cache[mode] = train(mode, None, None)[0]
        return cache[mode]

    return get


@pytest.mark.parametrize("balance", ["auto", "fixed"])
@pytest.mark.parametrize("rtol", [None, 0.0], ids=["default_rtol", "rtol0"])
@pytest.mark.parametrize("mode", ["float32", "float64", "bf16"])
def test_loop_trains_to_success(mode, rtol, balance, plain_accuracy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalRangeWarning)  # the float64 switch
        acc, kappa0, kappa, history, crit = train(mode, rtol, balance)
    target = condnum.default_kappa_target(torch.float64 if mode == "float64" else torch.float32, 32)
    assert kappa >= min(KAPPA_RISE * kappa0, TARGET_FRACTION * target), (kappa0, kappa)
    assert acc >= ACCURACY_KEPT * plain_accuracy(mode)
    assert all(h["task"] == h["task"] and abs(h["r_ill"]) < float("inf") for h in history)
    lam_h = [h["lam_h"] for h in history]
    assert max(lam_h) <= LAMBDA_DRIFT * lam_h[0]


def test_loop_trains_to_success_on_the_portable_backend(plain_accuracy):
    """The float32 loop with the defaults, every op on the portable implementation."""
    with warnings.catch_warnings(), condnum.backend("portable"):
        warnings.simplefilter("ignore", NumericalRangeWarning)
        acc, kappa0, kappa, _, _ = train("float32", None, "auto")
    target = condnum.default_kappa_target(torch.float32, 32)
    assert kappa >= min(KAPPA_RISE * kappa0, TARGET_FRACTION * target), (kappa0, kappa)
    assert acc >= ACCURACY_KEPT * plain_accuracy("float32")


def test_train_immunized_on_small_batches():
    """train_immunized with batches of N = 16 < d = 32: the rank-deficient Gram is no error."""
    torch.manual_seed(0)
    X, y, P, H = digits(torch.float32)
    ext = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    head = torch.nn.Linear(32, 5)
    primary = list(zip(X[P][:320].split(16), y[P][:320].split(16), strict=True))
    harmful = list(X[H][:320].split(16))
    opt = torch.optim.SGD([*ext.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    with pytest.warns(NumericalRangeWarning, match="N = 16 < d = 32"):
        result = train_immunized(
            ext, head, primary, harmful, task_loss=torch.nn.functional.cross_entropy,
            optimizer=opt, epochs=3, progress=False,
        )  # fmt: skip
    assert len(result.history["loss"]) == 60 and not result.events
    assert all(v == v and abs(v) < float("inf") for v in result.history["loss"])
