"""A full training step of our trainer vs torchaudio's HuBERT with the same config.

Ours: ``speechssl.train.trainer.Trainer.train_step`` on one batch (per-batch reseeding,
host-to-device copy, forward, backward, unscale, global-norm clipping, the all-rank
non-finite check, AdamW, schedule, the step's metrics fetched to the host). Peer:
``torchaudio.models.hubert_pretrain_model`` built from the same ``HubertConfig`` values,
stepped the way torchaudio's HuBERT recipe does (forward, summed cross-entropy over masked
frames / #masked + 10 x feature penalty, backward, clipping, AdamW, ``loss.item()``).
Both start from the same weights and see the same waveforms and 50 Hz labels, in the same
process, alternately; layer drop is off on both sides.

    python tools/bench/train_step.py --model hubert_tiny --batch 8 --seconds 4 --device cpu
    OMP_NUM_THREADS=1 python tools/bench/train_step.py --clock cpu      # shared machine
    python tools/bench/train_step.py --model hubert_base --batch 8 --seconds 15 \\
        --device cuda --precision bf16

Prints one JSON line per case: what, device, ours/peer median ms per step, ratio
(peer / ours; > 1 means ours is faster), audio seconds per second, parameter counts, and
the work size. Quote ratios on CPU; absolute numbers only on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, Path(__file__).resolve().parent):  # the package; model_step.py beside us
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from speechssl.distributed import init_distributed  # noqa: E402
from speechssl.models.registry import model_config  # noqa: E402
from speechssl.train.config import (  # noqa: E402
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    TrainerConfig,
)
from speechssl.train.data import (  # noqa: E402
    AudioReader,
    BatchSpec,
    LabelStream,
    TrainCorpus,
)
from speechssl.train.trainer import Trainer  # noqa: E402

RATE = 16000


class NoiseReader(AudioReader):
    def __init__(self, samples: int, seed: int) -> None:
        self.samples = samples
        self.seed = seed

    def __call__(self, utt_id: str) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(utt_id)])
        return (0.1 * rng.standard_normal(self.samples)).astype(np.float32)


def torchaudio_hubert(cfg: Any) -> torch.nn.Module:
    """torchaudio's HuBERT pretraining model with the values of our ``HubertConfig`` (the
    encoder arguments are mapped by ``model_step.py``, the models' step benchmark)."""
    from model_step import _ta_encoder_kwargs
    from torchaudio.models import hubert_pretrain_model

    mask = cfg.mask
    grad_mult = cfg.extractor.feature_grad_mult
    return hubert_pretrain_model(
        **_ta_encoder_kwargs(cfg),
        mask_prob=mask.mask_prob,
        mask_selection="static",
        mask_other=0.0,
        mask_length=mask.mask_length,
        no_mask_overlap=False,
        mask_min_space=1,
        mask_channel_prob=mask.channel_prob,
        mask_channel_selection="static",
        mask_channel_other=0.0,
        mask_channel_length=mask.channel_length,
        no_mask_channel_overlap=False,
        mask_channel_min_space=1,
        skip_masked=False,
        skip_nomask=False,
        num_classes=cfg.num_classes[0],
        final_dim=cfg.final_dim,
        feature_grad_mult=grad_mult if 0 < grad_mult < 1 else None,
    )


def num_frames(cfg: Any, samples: int) -> int:
    n = samples
    for _, kernel, stride in cfg.extractor.conv_layers:
        n = (n - kernel) // stride + 1
    return n


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    samples = round(args.seconds * RATE)
    classes = 100
    # layer drop off on both sides (it makes step times random), as model_step.py does
    overrides = {
        "num_classes": (classes,),
        "label_streams": ("km",),
        "encoder": {"layer_drop": 0.0},
    }
    cfg = model_config(args.model, **overrides)
    frames = num_frames(cfg, samples)
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, classes, frames) for _ in range(args.batch)]
    corpus = TrainCorpus(
        utt_ids=[str(i) for i in range(args.batch)],
        num_samples=np.full(args.batch, samples),
        sample_rate=RATE,
        reader=NoiseReader(samples, seed=1),
        streams=[LabelStream.from_arrays("km", 50.0, labels)],
    )
    with tempfile.TemporaryDirectory() as exp:
        tcfg = TrainConfig(
            model=ModelConfig(name=args.model, overrides=overrides),
            data=DataConfig(
                dir="(in memory)",
                min_seconds=0.0,
                crop_seconds=args.seconds,
                max_batch_seconds=args.seconds * args.batch,
                num_workers=0,
            ),
            optim=OptimConfig(lr=1e-4, warmup_steps=0),
            trainer=TrainerConfig(
                exp_dir=exp,
                device=args.device,
                precision=args.precision,
                max_steps=10**6,
                progress_bar=False,
                tensorboard=False,
                export_final=False,
                compile=args.compile,
            ),
        )
        trainer = Trainer(tcfg, init_distributed(args.device), train_corpus=corpus)
        batch = trainer.pretrain.dataset[
            BatchSpec(epoch=0, index=0, indices=tuple(range(args.batch)))
        ]
        ours_params = sum(p.numel() for p in trainer.model.parameters())

        from speechssl.interop.torchaudio import load_torchaudio_weights

        peer = torchaudio_hubert(trainer.model.config)  # the config with layer drop etc.
        load_torchaudio_weights(trainer.model, peer)  # same initial weights on both sides
        peer = peer.to(device)
        peer_params = sum(p.numel() for p in peer.parameters())
        peer_opt = torch.optim.AdamW(
            peer.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01
        )
        lab50 = torch.from_numpy(np.stack(labels)).to(device)
        autocast: Any = (
            torch.autocast(
                device.type, dtype=torch.bfloat16 if args.precision == "bf16" else torch.float16
            )
            if args.precision != "fp32"
            else contextlib.nullcontext()
        )

        def peer_step() -> float:
            waves = batch.waveforms.to(device, non_blocking=True)
            lengths = batch.lengths.to(device)
            with autocast:
                logit_m, _logit_u, pen = peer(waves, lab50, lengths)
            loss = (
                F.cross_entropy(
                    logit_m.float(),
                    torch.zeros(logit_m.shape[0], dtype=torch.long, device=device),
                    reduction="sum",
                )
                / max(1, logit_m.shape[0])
                + 10.0 * pen.float()
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(peer.parameters(), 10.0)
            peer_opt.step()
            peer_opt.zero_grad(set_to_none=True)
            return float(loss.item())

        def ours_step() -> None:
            trainer.train_step([batch])

        ours_t: list[float] = []
        peer_t: list[float] = []
        for _ in range(args.warmup):
            ours_step()
            peer_step()
        # cpu: process CPU time, i.e. the work each side does without the time spent
        # descheduled on a shared machine (use with OMP_NUM_THREADS=1)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        for _ in range(args.steps):
            for fn, out in ((ours_step, ours_t), (peer_step, peer_t)):
                sync(device)
                t0 = clock()
                fn()
                sync(device)
                out.append(clock() - t0)
    ours_ms = 1000 * statistics.median(ours_t)
    peer_ms = 1000 * statistics.median(peer_t)
    audio = float(batch.lengths.sum()) / RATE
    return {
        "what": f"train_step {args.model} (trainer step vs torchaudio hubert_pretrain_model step)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "ours_ms": round(ours_ms, 2),
        "peer_ms": round(peer_ms, 2),
        "ratio": round(peer_ms / ours_ms, 3),
        "ours_audio_sec_per_sec": round(audio / (ours_ms / 1000), 1),
        "peer_audio_sec_per_sec": round(audio / (peer_ms / 1000), 1),
        "params_ours": ours_params,
        "params_peer": peer_params,
        "batch": args.batch,
        "seconds": args.seconds,
        "steps": args.steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="hubert_tiny", help="hubert_tiny | hubert_base | hubert_large"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per utterance")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="trainer.compile=true for ours")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time (busy machine)",
    )
    args = parser.parse_args()
    print(json.dumps(run_case(args)), flush=True)


if __name__ == "__main__":
    main()
