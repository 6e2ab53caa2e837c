"""Shared skeleton of the speech models (HuBERT, wav2vec 2.0, data2vec audio, w2v-BERT):
front end on waveforms (conv stack or stacked fbank) -> span masker -> encoder
(transformer or conformer), plus ``extract``.

A family adds its targets and objective on top of :meth:`WaveformEncoderModel.encode`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from speechssl.core.conformer import ConformerEncoder
from speechssl.core.masking import SpanMasker
from speechssl.core.transformer import EncoderOutput, TransformerEncoder
from speechssl.data.batch import AudioBatch
from speechssl.frontends.fbank_stack import FbankStackFrontend
from speechssl.frontends.speech import FrontendOutput, WaveformFrontend
from speechssl.models.base import ExtractOutput, PretrainModel
from speechssl.models.common import extract_output


@dataclass
class EncodeResult:
    """Everything a family's objective may need from one pass.

    Attributes:
        front: front end output (frames, pre-projection features, feature penalty).
        mask: ``[N, S]`` time mask (True = masked) or ``None`` when not masked.
        encoder: encoder output (last state, optional hidden states).
        padding_mask: ``[N, S]`` True at padding, or ``None``.
    """

    front: FrontendOutput
    mask: Tensor | None
    encoder: EncoderOutput
    padding_mask: Tensor | None


class WaveformEncoderModel(PretrainModel[AudioBatch]):
    """Front end + masker + encoder (parts built by a factory and handed in)."""

    def __init__(
        self,
        frontend: WaveformFrontend | FbankStackFrontend,
        masker: SpanMasker,
        encoder: TransformerEncoder | ConformerEncoder,
    ) -> None:
        super().__init__()
        self.frontend = frontend
        self.masker = masker
        self.encoder = encoder
        self.frame_rate = frontend.frame_rate
        self.sample_rate = frontend.sample_rate

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Encoder frames for waveforms of ``lengths`` samples."""
        return self.frontend.output_lengths(lengths)

    def encode(
        self,
        waveforms: Tensor,
        lengths: Tensor | None = None,
        *,
        apply_mask: bool = True,
        mask: Tensor | None = None,
        output_hidden_states: bool = False,
        num_layers: int | None = None,
        generator: torch.Generator | None = None,
    ) -> EncodeResult:
        """Run the front end, (optionally) mask, and encode.

        ``mask`` forces a given ``[N, S]`` time mask (parity tests, fixed-mask evaluation);
        otherwise one is drawn when ``apply_mask``.
        """
        front = self.frontend(waveforms, lengths)
        x = front.frames.seqs
        padding_mask = front.frames.padding_mask
        used_mask: Tensor | None = None
        if apply_mask or mask is not None:
            x, used_mask = self.masker(x, padding_mask, mask=mask, generator=generator)
            if padding_mask is not None:
                used_mask = used_mask & ~padding_mask
        enc = self.encoder(
            x, padding_mask, output_hidden_states=output_hidden_states, num_layers=num_layers
        )
        return EncodeResult(front=front, mask=used_mask, encoder=enc, padding_mask=padding_mask)

    def extract(
        self, waveforms: Tensor, lengths: Tensor | None = None, num_layers: int | None = None
    ) -> ExtractOutput:
        res = self.encode(
            waveforms, lengths, apply_mask=False, output_hidden_states=True, num_layers=num_layers
        )
        return extract_output(
            res.encoder, res.padding_mask, self.frame_rate, num_layers, self.encoder.num_layers
        )
