"""Deep networks: immunizing a last block, half-precision features, torch.compile, DDP, ViT scale.

The immunization test runs examples/deep_immunization.py itself (loaded from the file), at
a few epochs on the bundled digits; the ViT-scale test runs :mod:`condnum.deep.scale`.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import condnum
from condnum import functional as CF
from condnum import reference as R
from condnum.deep import scale

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: Half-precision features: the regularizer's value equals the float32 computation on the
#: same rounded features to float32 rounding (the Gram accumulates in float32), and dL/dZ,
#: rounded back to Z's dtype, to that dtype's unit roundoff (norm-wise). Measured: value
#: bit-identical; gradient 1.9e-3 (bfloat16, eps 7.8e-3) and 2.3e-4 (float16, eps 9.8e-4).
HALF_VALUE_RTOL = 8 * torch.finfo(torch.float32).eps  # a few float32 roundings
HALF_GRAD_RTOL = {torch.bfloat16: 2**-7, torch.float16: 2**-10}


def _example(name: str) -> ModuleType:
    """Import examples/NAME.py (registered in sys.modules, which dataclasses need)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# --------------------------------------------------------------------------- immunization


def test_immunizing_last_block_on_digits_raises_rir_keeps_accuracy_slows_attacker(one_thread):
    de = _example("deep_immunization")
    out = de.run(
        "digits", pretrain_epochs=5, epochs=5, attack_epochs=100, groups=10, progress=False
    )
    assert out.rir["immunized"].rir > 2.0
    assert out.rir["immunized"].i > 2.0
    assert 0.5 < out.rir["no regularizers"].rir < 1.5  # fine-tuning alone does not immunize
    assert out.accuracy["immunized"] >= out.accuracy["theta_0"] - 0.01
    harmful = {m: p.test_accuracy for m, p in out.attacks["harmful"].items()}
    assert harmful["immunized"][:20].mean() < harmful["theta_0"][:20].mean() - 0.05
    primary = {m: p.test_accuracy for m, p in out.attacks["primary"].items()}
    assert primary["immunized"][-1] >= primary["theta_0"][-1] - 0.01


def test_trace_normalized_regularizers_are_scale_free():
    Z = torch.randn(40, 8, dtype=torch.float64)
    for r in (condnum.RIll(normalize=True), condnum.RWell(normalize=True)):
        torch.testing.assert_close(r(3.0 * Z), r(Z))
    # ... while kappa, what the attacker sees, is untouched by the normalisation
    torch.testing.assert_close(
        CF.condition_number(CF.gram(Z / Z.norm())), CF.condition_number(CF.gram(Z))
    )


# --------------------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_half_features(dtype):
    torch.manual_seed(0)
    layer = nn.Linear(32, 48)
    x = torch.randn(256, 32)
    with torch.autocast("cpu", dtype=dtype):
        Z = layer(x)
        assert Z.dtype == dtype
        Zh = Z.detach().requires_grad_()
        loss = condnum.RIll()(Zh) + condnum.RWell()(Zh)
        # into the float32 weights; lam = 1e-3 as in training: unscaled, dR_well/dZ ~
        # sigma_max ||Z|| overflows float16's 65504 in the float16 backward of the layer
        (1e-3 * (condnum.RIll()(Z) + condnum.RWell()(Z))).backward()
    assert loss.dtype == torch.float32  # float32 Gram, float32/float64 eigen-solve
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32
    assert bool(torch.isfinite(layer.weight.grad).all())
    loss.backward()
    assert Zh.grad is not None and Zh.grad.dtype == dtype

    Z32 = Zh.detach().float().requires_grad_()  # the same rounded features, in float32
    loss32 = condnum.RIll()(Z32) + condnum.RWell()(Z32)
    loss32.backward()
    assert _rel(loss.detach(), loss32.detach()) <= HALF_VALUE_RTOL
    assert _rel(Zh.grad, Z32.grad) <= HALF_GRAD_RTOL[dtype]


# --------------------------------------------------------------------------- torch.compile


def _training_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 24))
    head = nn.Linear(24, 3)
    x_p, y_p = torch.randn(64, 16), torch.randint(0, 3, (64,))
    x_h = 0.5 + 2.0 * torch.randn(64, 16)
    return model, head, (x_p, y_p, x_h)


def _loss_fn(model, head, r_ill, r_well, lam: float = 1e-3):
    def loss(x_p: torch.Tensor, y_p: torch.Tensor, x_h: torch.Tensor) -> torch.Tensor:
        z_p, z_h = model(x_p), model(x_h)
        return F.cross_entropy(head(z_p), y_p) + lam * r_well(z_p) + lam * r_ill(z_h)

    return loss


def _train(backend: str | None, steps: int = 3) -> list[torch.Tensor]:
    """``steps`` SGD-momentum steps; with a backend, the loss (fullgraph) and the optimizer
    step are compiled and the backward runs the compiled graph's backward."""
    model, head, batch = _training_setup()
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    loss_fn = _loss_fn(model, head, condnum.RIll(), condnum.RWell())
    step = opt.step
    if backend is not None:
        loss_fn = torch.compile(loss_fn, fullgraph=True, backend=backend)
        step = torch.compile(opt.step, backend=backend)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(*batch).backward()
        step()
    return [p.detach().clone() for p in params]


def test_regularized_loss_has_no_graph_breaks():
    model, head, batch = _training_setup()
    explanation = torch._dynamo.explain(_loss_fn(model, head, condnum.RIll(), condnum.RWell()))(
        *batch
    )
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def _check_compiled_training(backend: str) -> None:
    eager = _train(None)
    compiled = _train(backend)
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


#: raised inside torch while dynamo traces ``torch.optim.SGD.step`` (torch 2.13); not ours.
TORCH_JIT_DEPRECATION = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(TORCH_JIT_DEPRECATION)
def test_compiled_training_step_matches_eager_aot_eager():
    torch._dynamo.reset()
    _check_compiled_training("aot_eager")


@pytest.mark.slow
@pytest.mark.filterwarnings(TORCH_JIT_DEPRECATION)
def test_compiled_training_step_matches_eager_inductor():
    torch._dynamo.reset()  # inductor generates and compiles C++: minutes on a small CPU
    _check_compiled_training("inductor")


# --------------------------------------------------------------------------- DDP

WORLD = 2
LAM = 1e-3


def _ddp_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x_p = torch.randn(96, 12, generator=g, dtype=torch.float64)
    y_p = torch.randint(0, 3, (96,), generator=g)
    return x_p, y_p, 0.5 + 2.0 * torch.randn(96, 12, generator=g, dtype=torch.float64)


def _ddp_nets() -> tuple[nn.Module, nn.Module]:
    """(extractor, head), seeded: the same initial weights in every process."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 10), nn.Tanh())
    return model.double(), nn.Linear(10, 3).double()


def _step(model: nn.Module, head: nn.Module, x_p, y_p, x_h, lam: float, group=None) -> None:
    """One SGD step of ``CE + lam (R_well(Z_P) + R_ill(Z_H))``, one forward for both."""
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.1)
    Z = model(torch.cat([x_p, x_h]))
    z_p, z_h = Z[: x_p.shape[0]], Z[x_p.shape[0] :]
    reg = condnum.RWell(process_group=group)(z_p) + condnum.RIll(process_group=group)(z_h)
    (F.cross_entropy(head(z_p), y_p) + lam * reg).backward()
    opt.step()


def _ddp_rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, head = (nn.parallel.DistributedDataParallel(m) for m in _ddp_nets())
        x_p, y_p, x_h = (t.chunk(WORLD)[rank] for t in _ddp_data())
        _step(model, head, x_p, y_p, x_h, LAM * WORLD, dist.group.WORLD)  # lam x world size
        out[rank] = [p.detach().clone() for p in model.module.parameters()]
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_ddp_step_with_lambda_times_world_size_equals_single_process_global_batch():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_rank, args=(_free_port(), out), nprocs=WORLD, join=True)
        results = dict(out)
    model, head = _ddp_nets()
    _step(model, head, *_ddp_data(), LAM)
    for rank in range(WORLD):
        for a, b in zip(results[rank], model.parameters(), strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- ViT scale


@pytest.mark.parametrize("features", ["pooled", "tokens"])
def test_vit_scale_regularizers_on_transformer_features(features, one_thread):
    s = scale.setup(128, tokens=4, features=features, device=torch.device("cpu"), depth=2)
    n = 64 if features == "pooled" else 256
    assert s.z_P[0].shape == (n, 128)
    Z_P, Z_H = s.next_features()
    ours = s.regularizers(Z_P, Z_H)
    ours.backward()

    def small_gram(Z):
        Z = (Z / Z.norm()).double()
        return Z.T @ Z if Z.shape[0] >= Z.shape[1] else Z @ Z.T

    Zr_P, Zr_H = Z_P.detach().requires_grad_(), Z_H.detach().requires_grad_()
    k = min(n, 128)  # the rank of Z^T Z, as scale.setup passes
    ref = R.r_well(small_gram(Zr_P), k=k) + R.r_ill(small_gram(Zr_H), k=k)
    ref.backward()
    assert _rel(ours.detach(), ref.detach()) < 1e-3
    assert _rel(Z_H.grad, Zr_H.grad) < 1e-2 and _rel(Z_P.grad, Zr_P.grad) < 1e-2

    block0 = copy.deepcopy(s.block.state_dict())
    opt = torch.optim.SGD(s.block.parameters(), lr=1e-3, momentum=0.9)
    assert torch.isfinite(torch.tensor(scale.immunization_step(s, opt, lam=1e-3)))
    assert any(not torch.equal(v, s.block.state_dict()[k]) for k, v in block0.items())
