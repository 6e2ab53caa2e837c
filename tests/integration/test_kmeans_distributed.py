"""k-means over 2 real gloo processes gives the centroids of 1 process on the same data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from speechssl.units.kmeans import KMeansConfig, KMeansModel, fit_kmeans
from speechssl.units.synthetic import MixtureSpec, write_mixture_store

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cfg(**kw) -> KMeansConfig:
    base = dict(k=12, device="cpu", n_init=2, init_lloyd_iters=3, block_frames=700, seed=3)
    base.update(kw)
    return KMeansConfig(**base)


def _worker(rank: int, world: int, port: int, store: str, out: str, cfg_kw: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        result = fit_kmeans(store, _cfg(**cfg_kw))
        if rank == 0:
            result.model.save(out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "store"
    # 3 shards over 2 processes: rank 0 reads shards 0 and 2, rank 1 reads shard 1
    spec = MixtureSpec(num_frames=9000, dim=6, components=10, spread=3.0, seed=11)
    write_mixture_store(root, spec, nshard=3)
    return root


def test_two_gloo_processes_match_one(store, tmp_path):
    # a small init sample: initialisation reads a subset of utterances (not the full pass);
    # --percent sampling must pick the same utterances whatever the process count
    cfg_kw: dict = {"init_sample_frames": 600, "fraction": 0.7}
    torch.set_num_threads(1)
    single = fit_kmeans(store, _cfg(**cfg_kw)).model
    out = tmp_path / "km2"
    mp.spawn(_worker, args=(2, _free_port(), str(store), str(out), cfg_kw), nprocs=2, join=True)
    multi = KMeansModel.load(out)
    assert multi.meta["world_size"] == 2 and single.meta["world_size"] == 1
    assert multi.meta["num_frames"] == single.meta["num_frames"]
    assert multi.meta["init"]["sample_frames"] == single.meta["init"]["sample_frames"]
    assert multi.meta["iterations"] == single.meta["iterations"]
    # statistics summed in another order differ only by float64 rounding
    torch.testing.assert_close(multi.centroids, single.centroids, rtol=0, atol=1e-5)
    assert multi.meta["inertia_per_frame"] == pytest.approx(
        single.meta["inertia_per_frame"], rel=1e-6
    )


@pytest.mark.slow
def test_torchrun_cli_with_sampling_and_normalisation(store, tmp_path):
    out = tmp_path / "km"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(_free_port()), "-m", "speechssl.cli", "kmeans", "fit",
        "--features", str(store), "--k", "12", "--out", str(out), "--device", "cpu",
        "--seed", "3", "--n-init", "2", "--threads", "1", "--percent", "60",
        "--normalize", "global_mv",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["world_size"] == 2
    single = fit_kmeans(
        store, _cfg(block_frames=None, init_lloyd_iters=10, fraction=0.6, normalize="global_mv")
    ).model
    multi = KMeansModel.load(out)
    assert multi.meta["world_size"] == 2
    assert multi.meta["num_frames"] == single.meta["num_frames"] < 9000
    torch.testing.assert_close(multi.centroids, single.centroids, rtol=0, atol=1e-5)
    torch.testing.assert_close(multi.mean, single.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(multi.std, single.std, rtol=1e-6, atol=1e-6)
