"""What every pretraining model offers the trainer, feature dumping and downstream probing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from torch import Tensor, nn

from speechssl.core.loss import LossRecord
from speechssl.data.batch import AudioBatch
from speechssl.data.images import ImageBatch

#: the batch type of a model's modality: ``AudioBatch`` (waveforms) or ``ImageBatch`` (images)
BatchT = TypeVar("BatchT", AudioBatch, ImageBatch)


@dataclass
class PretrainOutput:
    """Result of a pretraining forward pass.

    Attributes:
        loss: the typed loss record (``loss.total`` is what the trainer backpropagates).
        metrics: detached scalar tensors to log, e.g. ``acc_masked``, ``acc_unmasked``,
            ``code_perplexity``, ``prob_perplexity``, ``temperature``.
        num_frames: number of encoder frames in the batch (for throughput/normalisation).
    """

    loss: LossRecord
    metrics: dict[str, Tensor] = field(default_factory=dict)
    num_frames: int = 0


@dataclass
class ExtractOutput:
    """All layer hidden states for frozen use.

    Attributes:
        hidden_states: ``[N, S, D]`` per layer, indexed exactly like ``transformers`` 5.x
            ``output_hidden_states``: index 0 is the input of the first transformer layer
            (front end, projection, positional convolution, and for post-LN models the
            encoder LayerNorm), index ``i`` the raw output of transformer layer ``i``. For
            pre-LN (``layer_norm_first``) models the final LayerNorm is *not* in
            ``hidden_states[-1]``; it is in ``last_hidden_state``.
        padding_mask: ``[N, S]`` bool, True at padding; ``None`` if nothing is padded.
        frame_rate: frames per second of the hidden states.
        last_hidden_state: the encoder output (``transformers``' ``last_hidden_state``);
            ``None`` when extraction stopped early (``num_layers``).
    """

    hidden_states: list[Tensor]
    padding_mask: Tensor | None
    frame_rate: float
    last_hidden_state: Tensor | None = None


class PretrainModel(nn.Module, Generic[BatchT]):
    """Base class of pretraining models created through the model registry, typed by the
    batch of their modality: audio families are ``PretrainModel[AudioBatch]``, image
    families ``PretrainModel[ImageBatch]`` (the registry records the same as
    ``ModelSpec.modality``, and ``speechssl-train`` refuses a model of another modality
    than its data before building anything)."""

    #: frames per second of the encoder output (50 for the 20 ms waveform front end)
    frame_rate: float = 50.0
    #: waveform sample rate the model expects
    sample_rate: int = 16000
    #: registry name and family, set by ``create_model`` (used by saving and export)
    model_name: str = ""
    family: str = ""
    #: the config dataclass the model was built from
    config: Any = None

    def forward(self, batch: BatchT) -> PretrainOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def extract(
        self, waveforms: Tensor, lengths: Tensor | None = None, num_layers: int | None = None
    ) -> ExtractOutput:  # pragma: no cover - interface
        """Hidden states of every layer (or the first ``num_layers``), no masking, no grad
        requirement; used by probing and ``features dump --kind model``. ``hidden_states``
        has ``num_layers + 1`` entries (see :class:`ExtractOutput` for the indexing).
        Dropout follows the module's train/eval mode: call ``model.eval()`` for frozen use."""
        raise NotImplementedError

    def after_optimizer_step(self, num_updates: int) -> None:
        """Hook called by the trainer after each optimizer step (Gumbel temperature
        annealing, EMA teacher updates, ...). ``num_updates`` counts completed steps."""
        return None
