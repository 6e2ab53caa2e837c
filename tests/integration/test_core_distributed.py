"""Cross-rank statistics with real torch.distributed (gloo, 2 CPU processes)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from speechssl.core.quantizers import GumbelVectorQuantizer, diversity_loss
from speechssl.distributed import all_reduce_mean


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        q = GumbelVectorQuantizer(6, 2, 4, 4, distributed=True).eval()
        x_all = torch.randn(2, 10, 6) * torch.tensor([1.0, 3.0]).view(2, 1, 1)
        out = q(x_all[rank])
        loss = diversity_loss(out.prob_perplexity, out.num_codes)
        loss.backward()
        v = torch.tensor([float(rank + 1)], requires_grad=True)
        m = all_reduce_mean(v * v)
        m.backward()
        torch.save(
            {
                "loss": loss.detach(),
                "grad": q.weight_proj.weight.grad,
                "m": m.detach(),
                "vgrad": v.grad,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_distributed_prob_perplexity_equals_global_batch(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # the same model on the concatenated batch in one process
    torch.manual_seed(0)
    q = GumbelVectorQuantizer(6, 2, 4, 4).eval()
    x_all = torch.randn(2, 10, 6) * torch.tensor([1.0, 3.0]).view(2, 1, 1)
    out = q(x_all.reshape(20, 6))
    loss = diversity_loss(out.prob_perplexity, out.num_codes)
    loss.backward()
    assert torch.allclose(r0["loss"], loss, atol=1e-6) and torch.allclose(
        r1["loss"], loss, atol=1e-6
    )
    # DDP averages gradients over ranks: that average equals the global-batch gradient
    assert torch.allclose((r0["grad"] + r1["grad"]) / 2, q.weight_proj.weight.grad, atol=1e-6)
    # all_reduce_mean: mean of v^2 over ranks = (1 + 4) / 2; d/dv_r (sum over ranks' means)/W
    assert torch.allclose(r0["m"], torch.tensor([2.5]))
    assert torch.allclose(r0["vgrad"], torch.tensor([2.0 * 1.0])) and torch.allclose(
        r1["vgrad"], torch.tensor([2.0 * 2.0])
    )
