"""RIll / RWell with a process group: 2 gloo ranks equal one process on the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import condnum

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _features() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(96, 12, dtype=torch.float64, generator=g))
    return U * torch.logspace(0, -1.5, 12, dtype=torch.float64)


def _rank_main(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        Z = _features().chunk(WORLD)[rank].clone().requires_grad_()
        loss = condnum.RIll(process_group=dist.group.WORLD)(Z) + condnum.RWell(
            process_group=dist.group.WORLD
        )(Z)
        loss.backward()
        out[rank] = (loss.detach(), Z.grad)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_two_ranks_match_single_process_on_concatenated_batch():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_main, args=(_free_port(), out), nprocs=WORLD, join=True)
        results = dict(out)
    Z = _features().requires_grad_()
    loss = condnum.RIll()(Z) + condnum.RWell()(Z)
    loss.backward()
    assert sorted(results) == list(range(WORLD)), f"ranks that reported: {sorted(results)}"
    for rank, (rank_loss, rank_grad) in results.items():
        torch.testing.assert_close(rank_loss, loss.detach(), rtol=1e-10, atol=0)
        torch.testing.assert_close(rank_grad, Z.grad.chunk(WORLD)[rank], rtol=1e-8, atol=1e-12)
