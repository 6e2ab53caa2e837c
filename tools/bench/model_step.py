"""Benchmark one pretraining training step (forward + backward) of our models vs peers.

Cases (same config, same batch, same process, ours and the peer alternating):

* ``hubert``: ``hubert_<size>`` vs ``torchaudio.models.hubert_pretrain_model`` with the same
  architecture (torchaudio's ``hubert_pretrain_base`` for base), loss = masked
  cross-entropy + 10 x feature penalty on both sides (torchaudio's recipe loss);
* ``wav2vec2_encoder``: the ``wav2vec2_<size>`` front end + encoder vs
  ``torchaudio.models.wav2vec2_model`` (torchaudio has no wav2vec 2.0 pretraining model), loss =
  mean square of the encoder output on both sides;
* ``wav2vec2``: our full pretraining step (quantizer, 100 distractors, InfoNCE, diversity,
  feature penalty) vs ``transformers.Wav2Vec2ForPreTraining`` with the same config, given
  a mask and distractor indices drawn by transformers' own helpers.

Layer drop is set to 0 on both sides (it makes step times random); dropout stays as
configured. The optimizer step is not timed (identical work for both). Each case prints one
JSON line: median seconds per step of ours and the peer, ``ratio`` = peer / ours (> 1: ours
is faster), audio-seconds per second, and on CUDA the model FLOPs utilisation (``mfu``,
FLOPs from :mod:`speechssl.models.flops` over the GPU's dense bf16 peak).

    python tools/bench/model_step.py                          # CPU, base models, small batch
    python tools/bench/model_step.py --size tiny --repeats 2  # quick smoke run
    python tools/bench/model_step.py --device cuda --batch 8 --seconds 15 --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from speechssl.data.batch import AudioBatch
from speechssl.interop.hf import hf_config, to_transformers_state
from speechssl.interop.torchaudio import load_torchaudio_weights
from speechssl.models import create_model
from speechssl.models.flops import peak_bf16_tflops, train_step_flops


def _ta_encoder_kwargs(cfg: Any) -> dict[str, Any]:
    e, x = cfg.encoder, cfg.extractor
    return dict(
        extractor_mode=x.mode,
        extractor_conv_layer_config=[list(layer) for layer in x.conv_layers],
        extractor_conv_bias=x.conv_bias,
        encoder_embed_dim=e.dim,
        encoder_projection_dropout=cfg.dropout_input,
        encoder_pos_conv_kernel=e.pos_conv_kernel,
        encoder_pos_conv_groups=e.pos_conv_groups,
        encoder_num_layers=e.num_layers,
        encoder_num_heads=e.num_heads,
        encoder_attention_dropout=e.attention_dropout,
        encoder_ff_interm_features=e.ffn_dim,
        encoder_ff_interm_dropout=e.activation_dropout,
        encoder_dropout=e.dropout,
        encoder_layer_norm_first=e.layer_norm_first,
        encoder_layer_drop=0.0,
    )


def _batch(n: int, seconds: float, num_classes: int, device: str, seed: int = 0) -> AudioBatch:
    """Noise-like audio with mildly unequal lengths (the last utterance 90% long) and
    50 Hz labels."""
    gen = torch.Generator().manual_seed(seed)
    t = int(seconds * 16000)
    lengths = torch.full((n,), t, dtype=torch.long)
    if n > 1:
        lengths[-1] = int(0.9 * t)
    waves = 0.1 * torch.randn(n, t, generator=gen)
    waves[torch.arange(t).unsqueeze(0) >= lengths.unsqueeze(1)] = 0.0
    s = (t - 400) // 320 + 1
    labels = torch.randint(0, num_classes, (n, s), generator=gen)
    frames = (lengths - 400) // 320 + 1
    labels[torch.arange(s).unsqueeze(0) >= frames.unsqueeze(1)] = -100
    return AudioBatch(waves, lengths, {"km": labels}, {"km": 50.0}, [f"u{i}" for i in range(n)]).to(
        device
    )


def _timer(device: str) -> Callable[[], float]:
    def now() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    return now


def _measure(
    step: Callable[[], torch.Tensor], device: str, warmup: int, repeats: int
) -> list[float]:
    now = _timer(device)
    for _ in range(warmup):
        step().backward()
    times = []
    for _ in range(repeats):
        t0 = now()
        step().backward()
        times.append(now() - t0)
    return times


def _autocast(device: str, dtype: str) -> AbstractContextManager[Any]:
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(
        device_type=device.split(":")[0],
        dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype],
    )


def case_hubert(
    args: argparse.Namespace,
) -> tuple[Any, Callable[[], torch.Tensor], Callable[[], torch.Tensor], AudioBatch]:
    ours = create_model(f"hubert_{args.size}", encoder={"layer_drop": 0.0}).to(args.device).train()
    cfg = ours.config
    peer = torchaudio.models.hubert_pretrain_model(
        **_ta_encoder_kwargs(cfg),
        mask_prob=cfg.mask.mask_prob,
        mask_selection="static",
        mask_other=0.0,
        mask_length=cfg.mask.mask_length,
        no_mask_overlap=False,
        mask_min_space=1,
        mask_channel_prob=0.0,
        mask_channel_selection="static",
        mask_channel_other=0.0,
        mask_channel_length=10,
        no_mask_channel_overlap=False,
        mask_channel_min_space=1,
        skip_masked=False,
        skip_nomask=False,
        num_classes=cfg.num_classes[0],
        final_dim=cfg.final_dim,
        feature_grad_mult=cfg.extractor.feature_grad_mult
        if 0 < cfg.extractor.feature_grad_mult < 1
        else None,
    )
    load_torchaudio_weights(ours, peer)
    peer = peer.to(args.device).train()
    batch = _batch(args.batch, args.seconds, cfg.num_classes[0], args.device)
    labels = batch.labels["km"]

    def ours_step() -> torch.Tensor:
        ours.zero_grad(set_to_none=True)
        with _autocast(args.device, args.dtype):
            return ours(batch).loss.total

    def peer_step() -> torch.Tensor:
        peer.zero_grad(set_to_none=True)
        with _autocast(args.device, args.dtype):
            logit_m, _logit_u, pen = peer(batch.waveforms, labels, batch.lengths)
            # torchaudio's recipe loss: the positive is class 0 of the logits
            target = torch.zeros(logit_m.shape[0], dtype=torch.long, device=logit_m.device)
            ce = F.cross_entropy(logit_m.float(), target, reduction="mean")
            return ce + 10.0 * pen

    return cfg, ours_step, peer_step, batch


def case_wav2vec2_encoder(
    args: argparse.Namespace,
) -> tuple[Any, Callable[[], torch.Tensor], Callable[[], torch.Tensor], AudioBatch]:
    ours = (
        create_model(f"wav2vec2_{args.size}", encoder={"layer_drop": 0.0}).to(args.device).train()
    )
    cfg = ours.config
    peer = torchaudio.models.wav2vec2_model(**_ta_encoder_kwargs(cfg), aux_num_out=None)
    load_torchaudio_weights(ours, peer)
    peer = peer.to(args.device).train()
    batch = _batch(args.batch, args.seconds, 2, args.device)

    def ours_step() -> torch.Tensor:
        ours.zero_grad(set_to_none=True)
        with _autocast(args.device, args.dtype):
            res = ours.encode(batch.waveforms, batch.lengths, apply_mask=False)
            return res.encoder.last_hidden_state.float().pow(2).mean()

    def peer_step() -> torch.Tensor:
        peer.zero_grad(set_to_none=True)
        with _autocast(args.device, args.dtype):
            out, _ = peer(batch.waveforms, batch.lengths)
            return out.float().pow(2).mean()

    return cfg, ours_step, peer_step, batch


def case_wav2vec2(
    args: argparse.Namespace,
) -> tuple[Any, Callable[[], torch.Tensor], Callable[[], torch.Tensor], AudioBatch]:
    from transformers import Wav2Vec2ForPreTraining
    from transformers.models.wav2vec2.modeling_wav2vec2 import (
        _compute_mask_indices,
        _sample_negative_indices,
    )

    ours = (
        create_model(f"wav2vec2_{args.size}", encoder={"layer_drop": 0.0}).to(args.device).train()
    )
    cfg = ours.config
    hcfg = hf_config(ours, pretraining=True)
    hcfg.layerdrop = 0.0
    peer = Wav2Vec2ForPreTraining(hcfg)
    hf_state, _ = to_transformers_state(ours, pretraining=True)
    peer.load_state_dict(hf_state, strict=True)
    peer = peer.to(args.device).train()
    batch = _batch(args.batch, args.seconds, 2, args.device)
    frames = int(ours.output_lengths(batch.lengths.max().unsqueeze(0)).item())
    frame_lengths = ours.output_lengths(batch.lengths).cpu()
    attn = (torch.arange(frames).unsqueeze(0) < frame_lengths.unsqueeze(1)).long()
    rng_state = np.random.get_state()
    np.random.seed(0)
    mask = _compute_mask_indices(
        (args.batch, frames),
        cfg.mask.mask_prob,
        cfg.mask.mask_length,
        attention_mask=attn,
        min_masks=cfg.mask.min_masks,
    )
    negs = _sample_negative_indices((args.batch, frames), cfg.num_negatives, mask)
    np.random.set_state(rng_state)
    mask_t = torch.tensor(mask, device=args.device)
    negs_t = torch.tensor(negs, device=args.device, dtype=torch.long)
    sample_mask = (
        torch.arange(batch.waveforms.shape[1], device=args.device).unsqueeze(0)
        < batch.lengths.unsqueeze(1)
    ).long()
    hf_attention = sample_mask if cfg.extractor.mode == "layer_norm" else None

    def ours_step() -> torch.Tensor:
        ours.zero_grad(set_to_none=True)
        with _autocast(args.device, args.dtype):
            return ours(batch, mask=mask_t).loss.total

    def peer_step() -> torch.Tensor:
        peer.zero_grad(set_to_none=True)
        with _autocast(args.device, args.dtype):
            out = peer(
                batch.waveforms,
                attention_mask=hf_attention,
                mask_time_indices=mask_t,
                sampled_negative_indices=negs_t,
            )
            return out.loss / mask_t.sum()

    return cfg, ours_step, peer_step, batch


CASES = {
    "hubert": case_hubert,
    "wav2vec2_encoder": case_wav2vec2_encoder,
    "wav2vec2": case_wav2vec2,
}
PEERS = {
    "hubert": "torchaudio.hubert_pretrain_model",
    "wav2vec2_encoder": "torchaudio.wav2vec2_model",
    "wav2vec2": "transformers.Wav2Vec2ForPreTraining",
}


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    cfg, ours_step, peer_step, batch = CASES[name](args)
    ours_t: list[float] = []
    peer_t: list[float] = []
    # alternate rounds so machine-load drift hits both sides alike
    for _ in range(args.rounds):
        ours_t += _measure(ours_step, args.device, args.warmup, args.repeats)
        peer_t += _measure(peer_step, args.device, args.warmup, args.repeats)
    ours_s, peer_s = statistics.median(ours_t), statistics.median(peer_t)
    audio_s = float(batch.lengths.sum()) / 16000
    result: dict[str, Any] = {
        "what": f"{name}_{args.size} train step (fwd+bwd)",
        "device": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"cpu x{torch.get_num_threads()}",
        "dtype": args.dtype,
        "ours_s": round(ours_s, 4),
        "peer": PEERS[name],
        "peer_s": round(peer_s, 4),
        "ratio": round(peer_s / ours_s, 3),
        "ours_audio_s_per_s": round(audio_s / ours_s, 2),
        "peer_audio_s_per_s": round(audio_s / peer_s, 2),
        "batch": args.batch,
        "seconds_per_utt": args.seconds,
        "audio_seconds": round(audio_s, 2),
        "steps_timed": len(ours_t),
    }
    if args.device.startswith("cuda"):
        flops = train_step_flops(cfg, batch.lengths.tolist())
        peak = args.peak_tflops or peak_bf16_tflops(torch.cuda.get_device_name())
        result["step_tflop"] = round(flops / 1e12, 3)
        if peak:
            result["mfu_ours"] = round(flops / ours_s / (peak * 1e12), 4)
            result["mfu_peer"] = round(flops / peer_s / (peak * 1e12), 4)
            result["peak_tflops"] = peak
        result["max_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="base", choices=["tiny", "base", "large"])
    parser.add_argument("--cases", default="hubert,wav2vec2_encoder,wav2vec2")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per utterance")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["fp32", "bf16", "fp16"],
        help="autocast dtype (default: fp32 on CPU, bf16 on CUDA)",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating ours/peer rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU peak for MFU")
    args = parser.parse_args()
    if args.dtype is None:
        args.dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for name in args.cases.split(","):
        print(json.dumps(run_case(name.strip(), args)), flush=True)


if __name__ == "__main__":
    main()
