"""`AudioBatch`: the padded waveform batch that flows from the data loader into models."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

#: padding value of label tensors (matches torch.nn.functional.cross_entropy's ignore_index)
LABEL_PAD = -100


@dataclass
class AudioBatch:
    """A batch of (cropped) utterances, right-padded.

    Attributes:
        waveforms: ``[N, T]`` float32 samples at the model's sample rate, zero padded.
        lengths: ``[N]`` long, number of real samples per utterance.
        labels: label streams by name (e.g. ``{"km100": [N, S]}``), long, padded with
            ``LABEL_PAD``; frame ``s`` of a stream covers time ``s / label_rate``.
        label_rates: frames per second of each label stream, same keys as ``labels``.
        utt_ids: utterance ids, in batch order.
    """

    waveforms: Tensor
    lengths: Tensor
    labels: dict[str, Tensor] = field(default_factory=dict)
    label_rates: dict[str, float] = field(default_factory=dict)
    utt_ids: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AudioBatch:
        return AudioBatch(
            waveforms=self.waveforms.to(device, non_blocking=non_blocking),
            lengths=self.lengths.to(device, non_blocking=non_blocking),
            labels={k: v.to(device, non_blocking=non_blocking) for k, v in self.labels.items()},
            label_rates=dict(self.label_rates),
            utt_ids=list(self.utt_ids),
        )

    def pin_memory(self) -> AudioBatch:
        return AudioBatch(
            waveforms=self.waveforms.pin_memory(),
            lengths=self.lengths.pin_memory(),
            labels={k: v.pin_memory() for k, v in self.labels.items()},
            label_rates=dict(self.label_rates),
            utt_ids=list(self.utt_ids),
        )

    @property
    def batch_size(self) -> int:
        return int(self.waveforms.shape[0])

    @property
    def padding_fraction(self) -> float:
        total = self.waveforms.numel()
        return 0.0 if total == 0 else 1.0 - float(self.lengths.sum()) / total
