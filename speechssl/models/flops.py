"""Analytic FLOP counts of waveform SSL models, for MFU (model FLOPs utilisation).

Counted (multiply-add = 2 FLOPs), per utterance of ``T`` samples with ``S`` encoder frames:

* conv extractor: ``2 * C_out * C_in * K * T_out`` per layer;
* feature projection: ``2 * S * C * D``;
* positional conv: ``2 * S * D * (D / groups) * K``;
* each transformer layer: ``2 * S * (4 D^2 + 2 D F)`` for the projections and FFN plus
  ``4 * S^2 * D`` for attention scores and the weighted sum;
* heads: HuBERT ``2 * S * D * P + 2 * S * P * C`` (projection + logits over ``C`` classes
  per stream); wav2vec 2.0 ``2 * S * C_feat * G * V`` (quantizer logits over all frames;
  an upper bound, the quantizer only sees masked frames) ``+ 2 * S * D * P`` (final
  projection) ``+ 2 * M * (K + 1) * P`` (similarities, ``M`` masked frames, ``K``
  distractors; ``M`` is taken as ``S / 2``).

A training step (forward + backward) is ``3 x`` the forward count (the usual
approximation: the backward pass costs twice the forward). Normalisation layers,
activations, softmax and the loss are not counted (memory-bound, a few percent).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from speechssl.frontends.speech import ConvExtractorConfig


def conv_extractor_flops(config: ConvExtractorConfig, num_samples: int) -> tuple[float, int]:
    """Forward FLOPs of the conv stack for one utterance, and its number of frames."""
    flops = 0.0
    length = num_samples
    in_ch = 1
    for ch, kernel, stride in config.conv_layers:
        length = max((length - kernel) // stride + 1, 0)
        flops += 2.0 * ch * in_ch * kernel * length
        in_ch = ch
    return flops, length


def forward_flops(config: Any, num_samples: int) -> float:
    """Forward FLOPs of one pretraining pass over one utterance of ``num_samples``."""
    conv, s = conv_extractor_flops(config.extractor, num_samples)
    enc = config.encoder
    d, f, c = enc.dim, enc.ffn_dim, config.extractor.out_dim
    flops = conv + 2.0 * s * c * d
    if enc.pos_conv_kernel > 0:
        flops += 2.0 * s * d * (d / enc.pos_conv_groups) * enc.pos_conv_kernel
    flops += enc.num_layers * (2.0 * s * (4 * d * d + 2 * d * f) + 4.0 * s * s * d)
    if hasattr(config, "num_classes"):  # masked prediction head
        p = config.final_dim
        streams = len(config.num_classes)
        flops += 2.0 * s * d * p * streams + sum(2.0 * s * p * k for k in config.num_classes)
    elif hasattr(config, "codebook_vars"):  # contrastive head with a quantizer
        p = config.final_dim
        flops += 2.0 * s * c * config.codebook_groups * config.codebook_vars
        flops += 2.0 * s * d * p + 2.0 * s * config.codevector_dim * p
        flops += 2.0 * (s / 2) * (config.num_negatives + 1) * p
    return flops


def train_step_flops(config: Any, lengths: Iterable[int]) -> float:
    """FLOPs of one forward + backward step over utterances of the given sample counts."""
    return 3.0 * sum(forward_flops(config, int(n)) for n in lengths)


#: dense bf16 peak TFLOP/s (no sparsity) by device-name fragment, for MFU
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
    "4090": 165.0,
}


def peak_bf16_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a known GPU (``None`` if unknown)."""
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None
