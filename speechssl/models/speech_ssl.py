"""Speech families built from the common core's joint-embedding and reconstruction objectives.

* ``speaker_dino_tiny`` / ``speaker_vicreg_tiny`` - utterance-level speaker embeddings: two
  random crops of the same utterance (the speaker is the shared content) go through a
  stacked-fbank front end and a transformer encoder, are mean-pooled, and are tied together
  by DINO (student + EMA teacher, :class:`~speechssl.core.objectives.DINOObjective`) or
  VICReg (:class:`~speechssl.core.objectives.VICRegObjective`; a batch of one utterance
  has no batch statistics, so such a step trains the invariance term only and logs
  ``single_utterance_batch=1``). Frame-level hidden states
  (50 Hz) come out of ``extract`` for the SID/ASV probes.
* ``ssast_tiny`` - SSAST: a segment of the log-mel spectrogram is cut into square patches by
  the *vision* patch front end (:class:`~speechssl.frontends.vision.PatchFrontend`, the
  spectrogram as a one-channel image), blocks of patches are masked
  (:class:`~speechssl.core.masking.BlockMasker`), and the encoder output is trained by
  SSAST's joint discriminative + reconstruction loss
  (:class:`~speechssl.core.objectives.SSASTObjective`). ``extract`` runs the whole utterance
  in segments and averages the frequency patches of each time step (``100 / patch_size`` Hz).

Both take an :class:`~speechssl.data.batch.AudioBatch`, so ``speechssl-train`` trains them on
any Kaldi data dir without labels (``data=synth``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.core.frames import Frames
from speechssl.core.heads import DINOHead, ProjectionMLP
from speechssl.core.loss import LossRecord
from speechssl.core.masking import BlockMaskConfig, BlockMasker
from speechssl.core.objectives import (
    DINOObjective,
    SSASTObjective,
    VICRegObjective,
    feature_std,
)
from speechssl.core.teacher import EMATeacher
from speechssl.core.transformer import (
    EncoderOutput,
    TransformerEncoder,
    TransformerEncoderConfig,
    build_transformer_encoder,
)
from speechssl.data.batch import AudioBatch
from speechssl.errors import ConfigError
from speechssl.features.modules import KaldiFbank
from speechssl.frontends.fbank_stack import (
    FbankStackConfig,
    FbankStackFrontend,
    normalize_per_utterance,
)
from speechssl.frontends.vision import PatchEmbeddingConfig, PatchFrontend
from speechssl.models.base import ExtractOutput, PretrainModel, PretrainOutput
from speechssl.models.common import coerce_subconfigs, extract_output
from speechssl.models.registry import register_model
from speechssl.models.vision import tiny_vision_encoder

SPEAKER_LOSSES = ("dino", "vicreg")


def tiny_speech_encoder() -> TransformerEncoderConfig:
    """2 post-LN layers of 64 (4 heads, FFN 128) with a convolutional position embedding
    (kernel 16, 8 groups), no dropout."""
    return TransformerEncoderConfig(
        dim=64, num_layers=2, num_heads=4, ffn_dim=128, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, layer_drop=0.0, pos_conv_kernel=16, pos_conv_groups=8,
    )  # fmt: skip


def tiny_fbank() -> FbankStackConfig:
    """40 log-mel bins every 10 ms, per-utterance normalised, 2 frames stacked (50 Hz)."""
    return FbankStackConfig(num_mel_bins=40, stride=2)


def random_crops(
    waveforms: Tensor, lengths: Tensor, crop: int, num_views: int, generator: torch.Generator | None
) -> tuple[Tensor, int]:
    """``num_views`` random crops of every utterance, each of ``min(crop, shortest)`` real
    samples: ``([V * N, L], L)``; offsets are uniform over each utterance's real samples."""
    n = waveforms.shape[0]
    size = int(min(crop, int(lengths.min())))
    if size < 1:
        raise ConfigError("every utterance needs samples to crop")
    gen_device = generator.device if generator is not None else waveforms.device
    u = torch.rand((num_views, n), generator=generator, device=gen_device).to(waveforms.device)
    offsets = torch.floor(u * (lengths - size + 1).to(u.dtype)).long()  # [V, N]
    index = offsets.unsqueeze(-1) + torch.arange(size, device=waveforms.device)  # [V, N, L]
    rows = waveforms.unsqueeze(0).expand(num_views, -1, -1)
    return rows.gather(2, index).reshape(num_views * n, size), size


# --------------------------------------------------------------------------- speaker embeddings


@dataclass(kw_only=True)
class SpeakerSSLConfig:
    """Utterance-level speaker embeddings from two crops of the same utterance."""

    fbank: FbankStackConfig = field(default_factory=tiny_fbank)
    """Fbank extraction, normalisation and stacking."""
    encoder: TransformerEncoderConfig = field(default_factory=tiny_speech_encoder)
    """Transformer encoder (with conv positions)."""
    dropout_input: float = 0.0
    """Dropout on the projected frames."""
    crop_seconds: float = 1.0
    """Length of each crop (the shortest utterance of the batch bounds it)."""
    loss: str = "dino"
    """``dino`` (student + EMA teacher) or ``vicreg``."""
    projector_dims: tuple[int, ...] = (128, 128, 128)
    """VICReg expander layer sizes."""
    vicreg_weights: tuple[float, float, float] = (25.0, 25.0, 1.0)
    """VICReg invariance, variance and covariance weights."""
    out_dim: int = 256
    """DINO head outputs ``K``."""
    head_hidden_dim: int = 128
    """DINO head MLP width."""
    head_bottleneck_dim: int = 32
    """DINO head bottleneck."""
    head_batch_norm: bool = False
    """BatchNorm in the DINO head's hidden layers (DINO's ``use_bn``). Mean-pooled crops of
    different utterances differ little at the start, so without it the centred teacher is
    the same (uniform) for every item and DINO collapses (``teacher_entropy`` = log K)."""
    student_temp: float = 0.1
    """DINO student temperature."""
    teacher_temp: float = 0.04
    """DINO teacher temperature."""
    center_momentum: float = 0.9
    """DINO centre momentum."""
    ema_decay: float = 0.996
    """DINO teacher EMA decay at step 0."""
    ema_end_decay: float = 1.0
    """DINO teacher EMA decay at the end of the anneal."""
    ema_anneal_steps: int = 1000
    """Updates of the EMA decay anneal."""
    gather_distributed: bool = False
    """Under several processes: VICReg over every rank's embeddings, the DINO centre by the
    mean over every rank's batch."""

    def __post_init__(self) -> None:
        coerce_subconfigs(self, {"fbank": FbankStackConfig, "encoder": TransformerEncoderConfig})
        self.projector_dims = tuple(int(d) for d in self.projector_dims)
        self.vicreg_weights = tuple(float(w) for w in self.vicreg_weights)  # type: ignore[assignment]
        if self.loss not in SPEAKER_LOSSES:
            raise ConfigError(f"loss must be one of {SPEAKER_LOSSES}, got {self.loss!r}")
        if self.crop_seconds <= 0:
            raise ConfigError(f"crop_seconds must be > 0, got {self.crop_seconds}")


class SpeakerSSLModel(PretrainModel):
    """Two crops -> fbank front end -> encoder -> mean pool -> DINO head or VICReg expander."""

    def __init__(
        self,
        config: SpeakerSSLConfig,
        frontend: FbankStackFrontend,
        encoder: TransformerEncoder,
        head: nn.Module,
        objective: nn.Module,
    ) -> None:
        super().__init__()
        self.config = config
        self.sample_rate = config.fbank.sample_rate
        self.frame_rate = config.fbank.sample_rate / 160 / config.fbank.stride
        self.frontend = frontend
        self.encoder = encoder
        self.head = head
        self.objective = objective
        self.teacher: EMATeacher | None = None
        if config.loss == "dino":
            self.teacher = EMATeacher(
                nn.ModuleDict({"frontend": frontend, "encoder": encoder, "head": head}),
                start=config.ema_decay, end=config.ema_end_decay,
                anneal_steps=config.ema_anneal_steps,
            )  # fmt: skip

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return self.frontend.output_lengths(lengths)

    @staticmethod
    def _pooled(frontend: Any, encoder: Any, waves: Tensor) -> Tensor:
        x = frontend(waves).frames.seqs  # crops are unpadded
        return encoder(x, None).last_hidden_state.mean(dim=1)

    @torch.no_grad()
    def _teacher_stats(self, teacher_logits: Tensor) -> dict[str, Tensor]:
        """DINO collapse diagnostics of the centred, sharpened teacher distribution:
        ``teacher_entropy`` (mean per-item entropy; ``log K`` = uniform collapse) and
        ``teacher_batch_entropy`` (entropy of the batch mean; 0 = every item on one
        output, the other collapse)."""
        obj: Any = self.objective
        p = F.softmax((teacher_logits.float() - obj.center) / obj.teacher_temp, dim=-1)
        per_item = -(p * p.clamp(min=1e-12).log()).sum(-1).mean()
        mean = p.mean(0)
        return {
            "teacher_entropy": per_item,
            "teacher_batch_entropy": -(mean * mean.clamp(min=1e-12).log()).sum(),
        }

    def forward(
        self,
        batch: AudioBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        crop = round(self.config.crop_seconds * self.sample_rate)
        waves, size = random_crops(batch.waveforms, batch.lengths, crop, 2, generator)
        n = batch.waveforms.shape[0]
        pooled = self._pooled(self.frontend, self.encoder, waves)
        z = self.head(pooled)
        metrics: dict[str, Tensor] = {"crop_seconds": torch.tensor(size / self.sample_rate)}
        if self.teacher is not None:
            parts: Any = self.teacher.model
            with torch.no_grad():
                t = parts["head"](self._pooled(parts["frontend"], parts["encoder"], waves))
            metrics.update(self._teacher_stats(t))  # before the centre moves
            record = self.objective(
                z.view(2, n, -1), t.view(2, n, -1), int(self.teacher.num_updates)
            )
            metrics["ema_decay"] = torch.tensor(self.teacher.decay)
            metrics["embedding_std"] = feature_std(pooled[:n].detach())
        elif n < 2 and not self.config.gather_distributed:  # gathered: every rank's rows
            # one utterance: VICReg's variance and covariance terms (batch statistics) are
            # undefined; the step trains the invariance term only and says so in the log
            inv = F.mse_loss(z[:n].float(), z[n:].float())
            zero = inv.detach() * 0.0
            weight = self.config.vicreg_weights[0]
            record = LossRecord(
                total=weight * inv,
                terms={"invariance": inv, "variance": zero, "covariance": zero},
                weights={"invariance": weight, "variance": 0.0, "covariance": 0.0},
                sample_size=1,
            )
            metrics["single_utterance_batch"] = torch.ones(())
        else:
            record = self.objective(z[:n], z[n:])
            metrics["embedding_std"] = feature_std(z[:n])
            metrics["single_utterance_batch"] = torch.zeros(())
        frames = int(self.output_lengths(torch.tensor([size]))[0]) * 2 * n
        return PretrainOutput(loss=record, metrics=metrics, num_frames=frames)

    def extract(
        self, waveforms: Tensor, lengths: Tensor | None = None, num_layers: int | None = None
    ) -> ExtractOutput:
        front = self.frontend(waveforms, lengths)
        enc = self.encoder(
            front.frames.seqs, front.frames.padding_mask, output_hidden_states=True,
            num_layers=num_layers,
        )  # fmt: skip
        return extract_output(
            enc, front.frames.padding_mask, self.frame_rate, num_layers, self.encoder.num_layers
        )

    def embed(self, waveforms: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Utterance embeddings ``[N, D]``: the encoder output mean-pooled over real frames."""
        ext = self.extract(waveforms, lengths)
        assert ext.last_hidden_state is not None
        h = ext.last_hidden_state
        if ext.padding_mask is None:
            return h.mean(dim=1)
        keep = (~ext.padding_mask).unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)

    def after_optimizer_step(self, num_updates: int) -> None:
        if self.teacher is not None:
            self.teacher.update(
                nn.ModuleDict(
                    {"frontend": self.frontend, "encoder": self.encoder, "head": self.head}
                ),
                num_updates,
            )


def build_speaker_ssl(config: SpeakerSSLConfig) -> SpeakerSSLModel:
    """Factory: fbank front end, encoder, head (DINO head or VICReg expander), objective."""
    frontend = FbankStackFrontend(config.fbank, config.encoder.dim, config.dropout_input)
    encoder = build_transformer_encoder(config.encoder)
    head: nn.Module
    objective: nn.Module
    if config.loss == "dino":
        head = DINOHead(
            config.encoder.dim, config.out_dim, hidden_dim=config.head_hidden_dim,
            bottleneck_dim=config.head_bottleneck_dim, batch_norm=config.head_batch_norm,
        )  # fmt: skip
        objective = DINOObjective(
            config.out_dim, student_temp=config.student_temp, teacher_temp=config.teacher_temp,
            warmup_teacher_temp=config.teacher_temp, center_momentum=config.center_momentum,
            gather_distributed=config.gather_distributed,
        )  # fmt: skip
    else:
        head = ProjectionMLP(config.encoder.dim, config.projector_dims)
        inv, var, cov = config.vicreg_weights
        objective = VICRegObjective(inv, var, cov, gather_distributed=config.gather_distributed)
    return SpeakerSSLModel(config, frontend, encoder, head, objective)


def speaker_dino_tiny_config() -> SpeakerSSLConfig:
    """DINO speaker embeddings: 40-bin fbank at 50 Hz, 2 layers of 64, 1 s crops, head
    128 -> 32 -> 256 with BatchNorm (without it the teacher collapses to uniform within
    20 updates on the bundled corpus), temperatures 0.1 / 0.04, EMA 0.996 -> 1 over 1000
    updates."""
    return SpeakerSSLConfig(loss="dino", head_batch_norm=True)


def speaker_vicreg_tiny_config() -> SpeakerSSLConfig:
    """VICReg speaker embeddings: as the DINO preset with a 3-layer expander of 128 and
    weights 25 / 25 / 1."""
    return SpeakerSSLConfig(loss="vicreg")


# --------------------------------------------------------------------------- SSAST


@dataclass(kw_only=True)
class SSASTConfig:
    """Masked spectrogram patch modelling (SSAST) with the vision patch front end."""

    num_mel_bins: int = 40
    """Log-mel bins (the spectrogram's width; SSAST uses 128)."""
    segment_frames: int = 96
    """Fbank frames per training segment (the spectrogram's height; SSAST uses 1024)."""
    patch_size: int = 8
    """Side of a square patch in frames and bins (SSAST: 16); divides both sizes above."""
    encoder: TransformerEncoderConfig = field(default_factory=tiny_vision_encoder)
    """Transformer encoder (pre-LN, no conv positions: the patch front end adds them)."""
    mask: BlockMaskConfig = field(
        default_factory=lambda: BlockMaskConfig(mask_prob=0.5, block_size=(2, 2))
    )
    """Block masking of the patch grid (SSAST's cluster masking; exact count)."""
    position: str = "sincos"
    """Patch positions: ``sincos`` (fixed 2-D, SSAST's), ``learned`` (an AST import) or ``none``."""
    cls_tokens: int = 0
    """Learned tokens put before the patches after masking (0, 1 or 2). SSAST's patch model,
    like AST, has 2 (a CLS and a distillation token; ``transformers.ASTModel`` needs 2 to
    export); they take part in attention and are dropped from every output."""
    discrimination_weight: float = 1.0
    """Weight of the discriminative (InfoNCE over masked patches) term."""
    reconstruction_weight: float = 10.0
    """Weight of the reconstruction (MSE) term (SSAST's lambda = 10)."""

    def __post_init__(self) -> None:
        coerce_subconfigs(self, {"encoder": TransformerEncoderConfig, "mask": BlockMaskConfig})
        if self.encoder.pos_conv_kernel:
            raise ConfigError("ssast: positions come from the patch front end; set encoder.pos_conv_kernel=0")  # fmt: skip
        if self.cls_tokens not in (0, 1, 2):
            raise ConfigError(f"ssast: cls_tokens must be 0, 1 or 2, got {self.cls_tokens}")
        if not self.mask.exact_count:
            raise ConfigError("ssast: mask.exact_count must be true (the discriminative term needs it)")  # fmt: skip

    @property
    def patch(self) -> PatchEmbeddingConfig:
        """The spectrogram segment as a one-channel image (raises if the patch does not divide it)."""
        return PatchEmbeddingConfig(
            image_size=(self.segment_frames, self.num_mel_bins), channels=1,
            patch_size=self.patch_size, position=self.position,
        )  # fmt: skip


class SSASTModel(PretrainModel):
    """SSAST: fbank segment -> patches -> block mask -> encoder -> two patch heads."""

    def __init__(
        self,
        config: SSASTConfig,
        frontend: PatchFrontend,
        masker: BlockMasker,
        encoder: TransformerEncoder,
        objective: SSASTObjective,
    ) -> None:
        super().__init__()
        self.config = config
        self.frame_rate = 100.0 / config.patch_size
        self.fbank = KaldiFbank(FbankStackConfig(num_mel_bins=config.num_mel_bins, stride=1).fbank_options())  # fmt: skip
        self.frontend = frontend
        self.masker = masker
        self.encoder = encoder
        patch_dim = config.patch.patch_dim
        self.discrimination_head = nn.Linear(config.encoder.dim, patch_dim)
        self.reconstruction_head = nn.Linear(config.encoder.dim, patch_dim)
        self.objective = objective
        self.cls_tokens: nn.Parameter | None = None
        if config.cls_tokens:
            self.cls_tokens = nn.Parameter(torch.zeros(config.cls_tokens, config.encoder.dim))
            nn.init.trunc_normal_(self.cls_tokens, std=0.02)

    def _encode(
        self, x: Tensor, *, output_hidden_states: bool = False, num_layers: int | None = None
    ) -> EncoderOutput:
        """Positions, the CLS tokens in front, the encoder, the CLS tokens dropped again."""
        x = self.frontend.add_positions(x)
        if self.cls_tokens is None:
            return self.encoder(
                x, None, output_hidden_states=output_hidden_states, num_layers=num_layers
            )
        k = self.cls_tokens.shape[0]
        cls = self.cls_tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        out = self.encoder(
            torch.cat([cls, x], dim=1), None, output_hidden_states=output_hidden_states,
            num_layers=num_layers,
        )  # fmt: skip
        hidden = None if out.hidden_states is None else [h[:, k:] for h in out.hidden_states]
        return EncoderOutput(last_hidden_state=out.last_hidden_state[:, k:], hidden_states=hidden)

    def spectrogram(self, waveforms: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per-utterance normalised log-mel ``[N, F, M]`` (padding 0) and frame counts."""
        with torch.no_grad():
            feats, nf = self.fbank(waveforms.float() * 32768.0, lengths)
            return normalize_per_utterance(feats.float(), nf), nf

    def output_lengths(self, lengths: Tensor) -> Tensor:
        from speechssl.features.kaldi import num_frames

        return torch.div(num_frames(lengths, self.fbank.opts.frame), self.config.patch_size, rounding_mode="floor")  # fmt: skip

    def _segments(self, spec: Tensor, nf: Tensor, generator: torch.Generator | None) -> Tensor:
        """One random ``segment_frames`` window of each utterance (zero padded if shorter):
        ``[N, 1, segment_frames, M]``."""
        seg = self.config.segment_frames
        if spec.shape[1] < seg:
            spec = F.pad(spec, (0, 0, 0, seg - spec.shape[1]))
        gen_device = generator.device if generator is not None else spec.device
        u = torch.rand(spec.shape[0], generator=generator, device=gen_device).to(spec.device)
        offsets = torch.floor(u * (nf - seg + 1).clamp(min=1).to(u.dtype)).long()
        index = offsets.unsqueeze(1) + torch.arange(seg, device=spec.device)
        rows = spec.gather(1, index.unsqueeze(-1).expand(-1, -1, spec.shape[-1]))
        return rows.unsqueeze(1)

    def forward(
        self,
        batch: AudioBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        spec, nf = self.spectrogram(batch.waveforms, batch.lengths)
        front = self.frontend(self._segments(spec, nf, generator))
        x, used = self.masker(front.frames.seqs, front.grid, mask=mask, generator=generator)
        h = self._encode(x).last_hidden_state
        record, acc = self.objective(
            self.discrimination_head(h), self.reconstruction_head(h), front.patches, used
        )
        metrics = {"acc_discrimination": acc, "mask_fraction": used.float().mean().detach()}
        return PretrainOutput(loss=record, metrics=metrics, num_frames=used.numel())

    def extract(
        self, waveforms: Tensor, lengths: Tensor | None = None, num_layers: int | None = None
    ) -> ExtractOutput:
        """Hidden states at ``100 / patch_size`` Hz: the utterance in consecutive segments,
        each time step the mean of its frequency patches."""
        spec, nf = self.spectrogram(waveforms, lengths)
        n, f, m = spec.shape
        seg = self.config.segment_frames
        chunks = max(1, -(-f // seg))
        spec = F.pad(spec, (0, 0, 0, chunks * seg - f)).view(n * chunks, 1, seg, m)
        front = self.frontend(spec)
        enc = self._encode(front.frames.seqs, output_hidden_states=True, num_layers=num_layers)
        gt, gf = front.grid

        def per_time(t: Tensor) -> Tensor:
            return t.view(n, chunks, gt, gf, -1).mean(dim=3).reshape(n, chunks * gt, -1)

        steps = torch.div(nf, self.config.patch_size, rounding_mode="floor").clamp(min=1)
        total = chunks * gt
        padding = Frames.padding_mask_from_lengths(steps, total)
        hidden = [per_time(t) for t in (enc.hidden_states or [])]
        pooled = EncoderOutput(
            last_hidden_state=per_time(enc.last_hidden_state), hidden_states=hidden
        )
        return extract_output(
            pooled, padding if bool(padding.any()) else None, self.frame_rate, num_layers,
            self.encoder.num_layers,
        )  # fmt: skip


def build_ssast(config: SSASTConfig) -> SSASTModel:
    """Factory: the vision patch front end on spectrogram segments, block masker, encoder,
    SSAST objective."""
    frontend = PatchFrontend(config.patch, config.encoder.dim)
    masker = BlockMasker(config.encoder.dim, config.mask)
    objective = SSASTObjective(config.discrimination_weight, config.reconstruction_weight)
    return SSASTModel(
        config, frontend, masker, build_transformer_encoder(config.encoder), objective
    )


def ssast_tiny_config() -> SSASTConfig:
    """Tiny SSAST: 40 log-mel bins, 0.96 s segments in 8x8 patches (12 x 5 grid), 2 CLS
    tokens (as SSAST's patch model and AST), 4 pre-LN layers of 64, half the patches masked
    in 2x2 blocks, loss d + 10 g."""
    return SSASTConfig(cls_tokens=2)


register_model("speaker_dino_tiny", family="speaker_dino", make_config=speaker_dino_tiny_config, build=build_speaker_ssl, size="tiny")  # fmt: skip
register_model("speaker_vicreg_tiny", family="speaker_vicreg", make_config=speaker_vicreg_tiny_config, build=build_speaker_ssl, size="tiny")  # fmt: skip
register_model("ssast_tiny", family="ssast", make_config=ssast_tiny_config, build=build_ssast, size="tiny")  # fmt: skip

__all__ = [
    "SSASTConfig",
    "SSASTModel",
    "SpeakerSSLConfig",
    "SpeakerSSLModel",
    "build_speaker_ssl",
    "build_ssast",
    "random_crops",
]
