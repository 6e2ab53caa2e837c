"""gather_distributed in the joint-embedding objectives with real torch.distributed (gloo,
2 CPU processes): NT-Xent and VICReg over the gathered batch equal the single-process loss
of the whole batch, and the gradients (summed over ranks, as DDP then averages the
identical per-rank losses) equal its gradient; Barlow Twins averages the ranks'
cross-correlations; the DINO centre moves by the global batch mean."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from speechssl.core.objectives import (
    BarlowTwinsObjective,
    DINOObjective,
    NTXentObjective,
    VICRegObjective,
    cross_correlation,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.randn(2, 8, 6, generator=g)  # fmt: skip


def _objectives(gather: bool):
    return {
        "nt_xent": NTXentObjective(0.5, gather_distributed=gather),
        "vicreg": VICRegObjective(gather_distributed=gather),
        "barlow": BarlowTwinsObjective(gather_distributed=gather),
    }


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        a, b, t = _data()
        rows = slice(4 * rank, 4 * rank + 4)
        out = {}
        for name, obj in _objectives(True).items():
            za = a[rows].clone().requires_grad_()
            zb = b[rows].clone().requires_grad_()
            rec = obj(za, zb)
            rec.total.backward()
            out[name] = (rec.total.detach(), za.grad, zb.grad)
        dino = DINOObjective(6, gather_distributed=True)
        dino(t[:, rows] + 0.1, t[:, rows])
        out["center"] = dino.center.clone()
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_gathered_objectives_equal_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    a, b, t = _data()
    for name in ("nt_xent", "vicreg"):
        obj = _objectives(False)[name]
        za, zb = a.clone().requires_grad_(), b.clone().requires_grad_()
        rec = obj(za, zb)
        rec.total.backward()
        for r, got in enumerate(ranks):
            loss, ga, gb = got[name]
            assert torch.allclose(loss, rec.total.detach(), atol=1e-6), name
            # DDP averages the ranks' gradients: 1/2 x (2 x dL/dz) = dL/dz
            assert torch.allclose(ga / 2, za.grad[4 * r : 4 * r + 4], atol=1e-6), name
            assert torch.allclose(gb / 2, zb.grad[4 * r : 4 * r + 4], atol=1e-6), name
    c = (cross_correlation(a[:4], b[:4]) + cross_correlation(a[4:], b[4:])) / 2
    diag = torch.diagonal(c)
    want = (1 - diag).pow(2).sum() + 5e-3 * (c.pow(2).sum() - diag.pow(2).sum())
    assert all(torch.allclose(r["barlow"][0], want, atol=1e-5) for r in ranks)
    centre = 0.1 * t.mean(dim=(0, 1))
    assert all(torch.allclose(r["center"], centre, atol=1e-6) for r in ranks)
    # without torch.distributed the flag changes nothing
    plain = NTXentObjective(0.5, gather_distributed=True)(a, b).total
    assert torch.allclose(plain, NTXentObjective(0.5)(a, b).total)
