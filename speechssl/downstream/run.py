"""Run one probing experiment: task x upstream, swept over learning rates.

``<trainer.exp_dir>/`` holds::

    cache/<split>/           layer caches (unless data.cache_dir points elsewhere)
    lr-<value>/              one TrainLoop run per learning rate (checkpoints, log.jsonl,
                             tb/, config.yaml, final/)
    lr-<value>.done.json     the run's settings and dev/test metrics, once finished
    layer_weights.json/.png  learned layer weights of the picked run
    results.json             task, upstream, metric, the sweep, the picked lr, dev and test

A finished run (its ``.done.json`` matches the settings) is not rerun; an unfinished one
resumes from its newest checkpoint (``resume=auto``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

import speechssl.downstream.tasks_superb2  # noqa: F401  (registers ic, sd)
from speechssl import distributed as dist
from speechssl.distributed import DistEnv
from speechssl.downstream import tasks_superb3  # noqa: F401  (registers er, sf)
from speechssl.downstream.cache import cache_layers, open_layer_cache
from speechssl.downstream.config import ProbeConfig
from speechssl.downstream.featurizer import Featurizer
from speechssl.downstream.tasks import (
    SPLITS,
    ProbeLabelError,
    ProbeSplit,
    ProbeTask,
    get_task,
    load_task_data,
    metric_value,
)
from speechssl.downstream.upstreams import Upstream, load_upstream
from speechssl.errors import ConfigError
from speechssl.utils.atomic import atomic_write_json

log = logging.getLogger(__name__)

RESULTS = "results.json"


def lr_name(lr: float) -> str:
    return f"lr-{lr:g}"


def build_splits(
    cfg: ProbeConfig, upstream: Upstream, layers: list[int], targets: dict[str, dict[str, Any]],
    env: DistEnv,
) -> dict[str, ProbeSplit]:  # fmt: skip
    """The task's splits, with their layer caches (written on rank 0 if missing)."""
    from speechssl.data.kaldi_dir import KaldiDataDir

    root = Path(cfg.data.dir)
    cache_root = Path(cfg.data.cache_dir or Path(cfg.trainer.exp_dir) / "cache")
    splits: dict[str, ProbeSplit] = {}
    for name in SPLITS:
        data_dir = root / name
        utts = list(targets[name])
        split = ProbeSplit(name, data_dir, utts, targets[name])
        if cfg.data.cache:
            error = None
            if env.is_main:
                try:
                    cache_layers(
                        data_dir, cache_root / name, upstream, layers, dtype=cfg.data.cache_dtype,
                        batch_seconds=cfg.data.extract_batch_seconds,
                    )  # fmt: skip
                except ConfigError as exc:
                    error = str(exc)
            error = dist.broadcast_object(error)
            if error is not None:
                raise ConfigError(error)
            split.cache = open_layer_cache(cache_root / name, upstream, layers)
            for u in utts:
                if u not in split.cache.store:
                    raise ProbeLabelError(u, f"not in the layer cache {cache_root / name}")
                split.frames[u] = split.cache.frames(u)
        else:
            ddir = KaldiDataDir(data_dir)
            rate = upstream.frame_rate
            split.frames = {u: max(1, math.floor(ddir.duration(u) * rate)) for u in utts}
        splits[name] = split
    return splits


def train_feature_stats(
    split: ProbeSplit, upstream: Upstream, layers: list[int], batch_utts: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer mean and standard deviation ``[L, D]`` over every frame of ``split`` (the
    training split), accumulated in float64: how a raw upstream (fbank/MFCC,
    :attr:`Upstream.standardize`) is normalised, like Kaldi's global CMVN."""
    count = 0
    total = torch.zeros(len(layers), upstream.dim, dtype=torch.float64)
    squares = torch.zeros_like(total)

    def add(feats: torch.Tensor) -> None:  # [T, L, D]
        nonlocal count, total, squares
        x = feats.to(torch.float64)
        count += x.shape[0]
        total += x.sum(0)
        squares += x.square().sum(0)

    if split.cache is not None:
        for u in split.utts:
            add(torch.from_numpy(np.array(split.cache.get(u), dtype=np.float64)))
    else:
        from speechssl.data.audio import LoadOptions
        from speechssl.data.kaldi_dir import KaldiDataDir, load_utterance

        ddir = KaldiDataDir(split.data_dir)
        opts = LoadOptions(sample_rate=upstream.sample_rate)
        for start in range(0, len(split.utts), batch_utts):
            utts = split.utts[start : start + batch_utts]
            waves = [load_utterance(ddir, u, opts)[0] for u in utts]
            lengths = torch.tensor([len(w) for w in waves])
            padded = torch.zeros(len(waves), int(lengths.max()))
            for i, w in enumerate(waves):
                padded[i, : len(w)] = w
            out = upstream(padded, lengths, layers)
            stacked = torch.stack(out.hidden_states, dim=2).cpu()
            for i, n in enumerate(out.frames.tolist()):
                add(stacked[i, : int(n)])
    if count == 0:
        raise ConfigError(f"{split.data_dir}: no frames to normalise the features with")
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-10).sqrt()
    return mean.float(), std.float()


def _reduce(sums: dict[str, float], weight: float) -> tuple[dict[str, float], float]:
    parts = dist.all_gather_objects((sums, weight))
    total: dict[str, float] = {}
    for s, _ in parts:
        for k, v in s.items():
            total[k] = total.get(k, 0.0) + v
    return total, sum(w for _, w in parts)


def evaluate_split(task: ProbeTask, name: str) -> dict[str, float]:
    """Every metric of a split (the task's own under its name, e.g. ``wer``, ``eer``)."""
    task.model.eval()
    with torch.no_grad():
        sums, weight = _reduce(*task.score_split(task.model, name))
    return {k: metric_value(sums, weight, k) for k in sums}


def _settings_digest(cfg: ProbeConfig, lr: float, upstream: Upstream) -> str:
    data = dataclasses.asdict(cfg)
    data["lr"] = lr
    data["upstream_identity"] = upstream.identity()
    data["trainer"].pop("progress_bar", None)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _load_best(task: ProbeTask, run_dir: Path) -> None:
    from safetensors.torch import load_file

    for sub in ("checkpoints/best", "final"):
        path = run_dir / sub / "model.safetensors"
        if path.is_file():
            task.model.load_state_dict(load_file(str(path), device=str(task.device)))
            return
    raise ConfigError(f"{run_dir}: no trained probe (no checkpoints/best or final)")


def run_probe(cfg: ProbeConfig, env: DistEnv) -> dict[str, Any]:
    """Train the probe for every lr, pick the best on dev, score test; returns the results."""
    from speechssl.train.trainer import TrainLoop

    if cfg.task.name == "qbe":  # no training: DTW over every layer (speechssl.downstream.qbe)
        from speechssl.downstream.qbe import run_qbe

        return run_qbe(cfg, env)
    spec = get_task(cfg.task.name)
    exp = Path(cfg.trainer.exp_dir)
    if (exp / "wav.scp").exists():
        raise ConfigError(f"trainer.exp_dir={exp} is a Kaldi data dir; point it at a new dir")
    vocab, targets = load_task_data(spec, Path(cfg.data.dir))
    spec = spec.configured(cfg.task, vocab)
    upstream = load_upstream(cfg.upstream, env.device)
    layer = cfg.task.layer if cfg.task.layer >= 0 else None
    if layer is not None and layer >= upstream.num_layers:
        raise ConfigError(
            f"task.layer={layer}: upstream {upstream.name} has hidden states "
            f"0..{upstream.num_layers - 1}"
        )
    layers = [layer] if layer is not None else list(range(upstream.num_layers))
    splits = build_splits(cfg, upstream, layers, targets, env)
    stats = train_feature_stats(splits["train"], upstream, layers) if upstream.standardize else None
    exp.mkdir(parents=True, exist_ok=True)

    def make_task(seed: int) -> ProbeTask:
        return ProbeTask(
            spec, upstream, layers, vocab, splits, env, seed=seed, layer=layer,
            layer_norm=cfg.task.layer_norm, proj_dim=cfg.task.proj_dim,
            max_batch_frames=cfg.data.max_batch_frames, max_batch_utts=cfg.data.max_batch_utts,
            grad_accum=cfg.trainer.grad_accum, feature_stats=stats,
        )  # fmt: skip

    sweep: list[dict[str, Any]] = []
    for lr in cfg.lr:
        run_dir = exp / lr_name(lr)
        done = exp / f"{lr_name(lr)}.done.json"
        digest = _settings_digest(cfg, lr, upstream)
        if done.is_file():
            record: dict[str, Any] = json.loads(done.read_text())
            if record.get("settings") != digest:
                raise ConfigError(
                    f"{done}: a finished run with other settings (upstream, data or config); "
                    "use a new trainer.exp_dir or delete it"
                )
            sweep.append(record)
            continue
        trainer = dataclasses.replace(cfg.trainer, exp_dir=str(run_dir))
        optim = dataclasses.replace(cfg.optim, lr=lr)
        run_cfg = dataclasses.replace(cfg, lr=[lr], optim=optim, trainer=trainer)
        loop = TrainLoop(
            lambda: make_task(cfg.trainer.seed), env, trainer=trainer, optim=optim,
            resume=cfg.resume, config=run_cfg,
        )  # fmt: skip
        summary = loop.fit()
        if summary.stopped == "signal":
            raise ConfigError(f"{run_dir}: stopped by a signal; rerun to resume")
        task = loop.task
        assert isinstance(task, ProbeTask)
        _load_best(task, run_dir)
        record = {
            "lr": lr,
            "run": str(run_dir),
            "settings": digest,
            "steps": summary.step,
        }
        for split in ("dev", "test"):
            scores = evaluate_split(task, split)
            record[split] = scores.get(spec.metric, math.nan)
            record[f"{split}_metrics"] = scores
        if env.is_main:
            atomic_write_json(done, record)
        sweep.append(record)

    better = min if spec.mode == "min" else max
    valid = [r for r in sweep if math.isfinite(r["dev"])]
    if not valid:
        raise ConfigError(f"{exp}: no run of the sweep has a finite dev {spec.metric}")
    best = better(valid, key=lambda r: r["dev"])
    picked = make_task(cfg.trainer.seed)
    _load_best(picked, Path(best["run"]))
    featurizer = picked.model.featurizer
    assert isinstance(featurizer, Featurizer)
    results = {
        "task": spec.name,
        "upstream": upstream.name,
        "upstream_spec": cfg.upstream,
        "upstream_identity": upstream.identity(),
        "metric": spec.metric,
        "mode": spec.mode,
        "lr": best["lr"],
        "dev": best["dev"],
        "test": best["test"],
        "dev_metrics": best.get("dev_metrics", {}),
        "test_metrics": best.get("test_metrics", {}),
        "sweep": [{"lr": r["lr"], "dev": r["dev"], "test": r["test"]} for r in sweep],
        "layer_weights": {str(k): v for k, v in featurizer.layer_weights().items()},
        "data": str(Path(cfg.data.dir).resolve()),
    }
    if env.is_main:
        title = f"{spec.name} / {upstream.name} (lr {best['lr']:g})"
        featurizer.save_weights(exp / "layer_weights.json", exp / "layer_weights.png", title)
        atomic_write_json(exp / RESULTS, results)
    return results
