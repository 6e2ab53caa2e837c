"""Joint-embedding and masked-image families on a small ViT, built from the common core.

* ``simclr_vision_tiny``, ``vicreg_vision_tiny``, ``barlow_twins_vision_tiny`` - two random
  views of each image (:func:`speechssl.data.images.augment_views`), the mean-pooled encoder
  output through a :class:`~speechssl.core.heads.ProjectionMLP`, and NT-Xent / VICReg /
  Barlow Twins (:mod:`speechssl.core.objectives.joint_embedding`);
* ``dino_vision_tiny`` - the same views through a student and an EMA teacher
  (:class:`~speechssl.core.teacher.EMATeacher`) with :class:`~speechssl.core.heads.DINOHead`
  and :class:`~speechssl.core.objectives.DINOObjective`;
* ``mae_vision_tiny`` - MAE: the encoder sees only the visible patches (75% hidden at
  random), a narrow decoder reconstructs the hidden ones (:class:`MAEObjective`);
* ``ijepa_vision_tiny`` - I-JEPA: a context encoder over the patches outside the target
  blocks, a narrow predictor to the EMA target encoder's latents at the target blocks
  (:class:`JEPAObjective`).

Every model takes an :class:`~speechssl.data.images.ImageBatch` (only ``images``), draws
its views or masks from ``generator`` (the global RNG when None, which the trainer seeds
per micro-batch), and offers the same ``extract`` as the other image models (one frame per
patch, row-major; the pre-LN encoder's final LayerNorm is in ``last_hidden_state``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from speechssl.core.heads import DINOHead, ProjectionMLP
from speechssl.core.loss import LossRecord
from speechssl.core.masking import BlockMaskConfig, compute_block_mask
from speechssl.core.objectives import (
    BarlowTwinsObjective,
    DINOObjective,
    JEPAObjective,
    MAEObjective,
    NTXentObjective,
    VICRegObjective,
    feature_std,
    nt_xent_accuracy,
)
from speechssl.core.positions import sincos_2d
from speechssl.core.teacher import EMATeacher
from speechssl.core.transformer import (
    TransformerEncoder,
    TransformerEncoderConfig,
    build_transformer_encoder,
)
from speechssl.data.images import ImageBatch, ImageViewsConfig, augment_views
from speechssl.errors import ConfigError
from speechssl.frontends.vision import PatchEmbeddingConfig, PatchFrontend
from speechssl.models.base import ExtractOutput, PretrainModel, PretrainOutput
from speechssl.models.common import coerce_subconfigs, extract_output
from speechssl.models.registry import register_model
from speechssl.models.vision import digits_patches, tiny_vision_encoder

JOINT_EMBEDDING_LOSSES = ("nt_xent", "vicreg", "barlow_twins")


def digits_views() -> ImageViewsConfig:
    """Views for 8x8 digits: crops of 40-100% of the image, no flip (a flipped digit is
    another symbol), brightness/contrast jitter, no blur (the images are already blurry)."""
    return ImageViewsConfig(
        crop_scale=(0.4, 1.0), flip_prob=0.0, jitter_prob=0.8, brightness=0.4, contrast=0.4
    )


def narrow_encoder(dim: int = 32, num_layers: int = 2) -> TransformerEncoderConfig:
    """A narrow pre-LN stack (MAE's decoder, I-JEPA's predictor) for the tiny presets."""
    return TransformerEncoderConfig(
        dim=dim,
        num_layers=num_layers,
        num_heads=4,
        ffn_dim=2 * dim,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layer_norm_first=True,
        layer_drop=0.0,
        pos_conv_kernel=0,
    )


def _check_encoder(family: str, encoder: TransformerEncoderConfig) -> None:
    if encoder.pos_conv_kernel:
        raise ConfigError(f"{family}: positions come from the patch front end; set pos_conv_kernel=0")  # fmt: skip


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x [N, P, D]``, ``index [N, K]`` -> ``[N, K, D]``."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _mask_index(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise indices of the True and the False entries of an exact-count ``[N, P]`` mask:
    ``([N, M], [N, P - M])``, each in patch order."""
    n = mask.shape[0]
    counts = mask.sum(dim=1)
    if n and bool((counts != counts[0]).any()):
        raise ValueError(f"every image needs the same number of masked patches, got {counts.tolist()}")  # fmt: skip
    m = int(counts[0]) if n else 0
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # True entries first
    return order[:, :m], order[:, m:]


class PatchEncoderModel(PretrainModel[ImageBatch]):
    """A patch front end and a pre-LN transformer encoder, with ``extract``."""

    frame_rate = 0.0

    def __init__(self, frontend: PatchFrontend, encoder: TransformerEncoder) -> None:
        super().__init__()
        self.frontend = frontend
        self.encoder = encoder

    def tokens(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(patch frames with positions [N, P, D], raw patches [N, P, C*p*p])``."""
        front = self.frontend(images)
        return self.frontend.add_positions(front.frames.seqs), front.patches

    def pooled(self, images: Tensor) -> Tensor:
        """The mean over patches of the encoder output: ``[N, D]``."""
        x, _ = self.tokens(images)
        return self.encoder(x, None).last_hidden_state.mean(dim=1)

    def extract(
        self, waveforms: Tensor, lengths: Tensor | None = None, num_layers: int | None = None
    ) -> ExtractOutput:
        """Hidden states of images ``[N, C, H, W]`` (``lengths`` is unused)."""
        x, _ = self.tokens(waveforms)
        enc = self.encoder(x, None, output_hidden_states=True, num_layers=num_layers)
        return extract_output(enc, None, 0.0, num_layers, self.encoder.num_layers)


def _num_patches_frames(batch: ImageBatch, model: PatchEncoderModel, views: int = 1) -> int:
    return views * batch.batch_size * model.frontend.config.num_patches


# --------------------------------------------------------------------------- SimCLR / VICReg / BT


@dataclass(kw_only=True)
class JointEmbeddingVisionConfig:
    """Two-view joint-embedding pretraining (SimCLR, VICReg, Barlow Twins) on a small ViT."""

    patch: PatchEmbeddingConfig = field(default_factory=digits_patches)
    """Image geometry and patch embedding."""
    encoder: TransformerEncoderConfig = field(default_factory=tiny_vision_encoder)
    """Transformer encoder (pre-LN, no conv position embedding)."""
    dropout_input: float = 0.0
    """Dropout on the embedded patches."""
    views: ImageViewsConfig = field(default_factory=digits_views)
    """How the two random views of an image are drawn."""
    loss: str = "nt_xent"
    """``nt_xent`` (SimCLR), ``vicreg`` or ``barlow_twins``."""
    projector_dims: tuple[int, ...] = (128, 64)
    """Output size of each projector layer (BatchNorm + ReLU between them)."""
    temperature: float = 0.5
    """NT-Xent temperature (loss ``nt_xent``)."""
    vicreg_weights: tuple[float, float, float] = (25.0, 25.0, 1.0)
    """VICReg invariance, variance and covariance weights (loss ``vicreg``)."""
    redundancy_weight: float = 5e-3
    """Barlow Twins off-diagonal weight (loss ``barlow_twins``)."""
    gather_distributed: bool = False
    """Under several processes, compute the loss over every rank's embeddings (NT-Xent
    negatives, VICReg statistics) / averaged cross-correlations (Barlow Twins)."""

    def __post_init__(self) -> None:
        coerce_subconfigs(
            self,
            {"patch": PatchEmbeddingConfig, "encoder": TransformerEncoderConfig, "views": ImageViewsConfig},
        )  # fmt: skip
        self.projector_dims = tuple(int(d) for d in self.projector_dims)
        self.vicreg_weights = tuple(float(w) for w in self.vicreg_weights)  # type: ignore[assignment]
        if self.loss not in JOINT_EMBEDDING_LOSSES:
            raise ConfigError(f"loss must be one of {JOINT_EMBEDDING_LOSSES}, got {self.loss!r}")
        if len(self.vicreg_weights) != 3:
            raise ConfigError(f"vicreg_weights must be 3 values, got {self.vicreg_weights}")


class JointEmbeddingVisionModel(PatchEncoderModel):
    """Two views -> pooled encoder -> projector -> a two-view loss."""

    def __init__(
        self,
        config: JointEmbeddingVisionConfig,
        frontend: PatchFrontend,
        encoder: TransformerEncoder,
        projector: ProjectionMLP,
        objective: nn.Module,
    ) -> None:
        super().__init__(frontend, encoder)
        self.config = config
        self.projector = projector
        self.objective = objective

    def forward(
        self,
        batch: ImageBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        views = augment_views(batch.images, self.config.views, 2, generator)
        n = batch.batch_size
        z = self.projector(self.pooled(views.flatten(0, 1)))
        z_a, z_b = z[:n], z[n:]
        record: LossRecord = self.objective(z_a, z_b)
        metrics = {"embedding_std": feature_std(z_a)}
        if self.config.loss == "nt_xent":
            metrics["acc_pair"] = nt_xent_accuracy(z_a, z_b)
        return PretrainOutput(
            loss=record, metrics=metrics, num_frames=_num_patches_frames(batch, self, 2)
        )


def build_joint_embedding_vision(config: JointEmbeddingVisionConfig) -> JointEmbeddingVisionModel:
    """Factory: front end, encoder, projector and the chosen objective."""
    _check_encoder(config.loss, config.encoder)
    frontend = PatchFrontend(config.patch, config.encoder.dim, config.dropout_input)
    encoder = build_transformer_encoder(config.encoder)
    projector = ProjectionMLP(config.encoder.dim, config.projector_dims)
    objective: nn.Module
    if config.loss == "nt_xent":
        objective = NTXentObjective(config.temperature, config.gather_distributed)
    elif config.loss == "vicreg":
        inv, var, cov = config.vicreg_weights
        objective = VICRegObjective(inv, var, cov, gather_distributed=config.gather_distributed)
    else:
        objective = BarlowTwinsObjective(
            config.redundancy_weight, gather_distributed=config.gather_distributed
        )
    return JointEmbeddingVisionModel(config, frontend, encoder, projector, objective)


def simclr_vision_tiny_config() -> JointEmbeddingVisionConfig:
    """SimCLR on 8x8 digits: tiny ViT, 2-layer projector 128 -> 64, NT-Xent at 0.5."""
    return JointEmbeddingVisionConfig(loss="nt_xent", projector_dims=(128, 64), temperature=0.5)


def vicreg_vision_tiny_config() -> JointEmbeddingVisionConfig:
    """VICReg on 8x8 digits: 3-layer expander of 128, weights 25 / 25 / 1."""
    return JointEmbeddingVisionConfig(loss="vicreg", projector_dims=(128, 128, 128))


def barlow_twins_vision_tiny_config() -> JointEmbeddingVisionConfig:
    """Barlow Twins on 8x8 digits: 3-layer expander of 128, off-diagonal weight 5e-3."""
    return JointEmbeddingVisionConfig(loss="barlow_twins", projector_dims=(128, 128, 128))


# --------------------------------------------------------------------------- DINO


@dataclass(kw_only=True)
class DINOVisionConfig:
    """DINO self-distillation on a small ViT (two global views, no multi-crop)."""

    patch: PatchEmbeddingConfig = field(default_factory=digits_patches)
    """Image geometry and patch embedding."""
    encoder: TransformerEncoderConfig = field(default_factory=tiny_vision_encoder)
    """Transformer encoder (pre-LN, no conv position embedding)."""
    dropout_input: float = 0.0
    """Dropout on the embedded patches."""
    views: ImageViewsConfig = field(default_factory=digits_views)
    """How the two random views of an image are drawn."""
    out_dim: int = 256
    """``K``: outputs of the DINO head (65536 in DINO)."""
    head_hidden_dim: int = 128
    """Width of the head's MLP (2048 in DINO)."""
    head_bottleneck_dim: int = 32
    """Bottleneck before the prototypes (256 in DINO)."""
    head_batch_norm: bool = False
    """BatchNorm in the head's MLP (DINO's ``use_bn``)."""
    student_temp: float = 0.1
    """Student softmax temperature."""
    teacher_temp: float = 0.04
    """Teacher softmax temperature after warmup."""
    warmup_teacher_temp: float = 0.04
    """Teacher temperature at step 0."""
    teacher_temp_warmup_steps: int = 0
    """Updates of the linear teacher-temperature warmup."""
    center_momentum: float = 0.9
    """Momentum of the centre of the teacher outputs."""
    ema_decay: float = 0.996
    """Teacher EMA decay at step 0."""
    ema_end_decay: float = 1.0
    """Teacher EMA decay at the end of the anneal (DINO anneals 0.996 -> 1 by a cosine;
    this is linear, the shared EMA schedule)."""
    ema_anneal_steps: int = 1000
    """Updates over which the decay goes from ``ema_decay`` to ``ema_end_decay``."""
    gather_distributed: bool = False
    """Under several processes, move the centre by the mean over every rank's batch."""

    def __post_init__(self) -> None:
        coerce_subconfigs(
            self,
            {"patch": PatchEmbeddingConfig, "encoder": TransformerEncoderConfig, "views": ImageViewsConfig},
        )  # fmt: skip


def _tower_parts(frontend: nn.Module, encoder: nn.Module, head: nn.Module | None) -> nn.ModuleDict:
    parts = {"frontend": frontend, "encoder": encoder}
    if head is not None:
        parts["head"] = head
    return nn.ModuleDict(parts)


def _tower_encode(parts: nn.ModuleDict, images: Tensor) -> Tensor:
    """The encoder output ``[N, P, D]`` of a (teacher) copy of front end + encoder."""
    frontend: Any = parts["frontend"]
    x = frontend.add_positions(frontend(images).frames.seqs)
    return parts["encoder"](x, None).last_hidden_state


class DINOVisionModel(PatchEncoderModel):
    """Student (front end, encoder, DINO head) and its EMA teacher on two views."""

    def __init__(
        self,
        config: DINOVisionConfig,
        frontend: PatchFrontend,
        encoder: TransformerEncoder,
        head: DINOHead,
        objective: DINOObjective,
    ) -> None:
        super().__init__(frontend, encoder)
        self.config = config
        self.head = head
        self.objective = objective
        self.teacher = EMATeacher(
            _tower_parts(frontend, encoder, head),
            start=config.ema_decay,
            end=config.ema_end_decay,
            anneal_steps=config.ema_anneal_steps,
        )

    @staticmethod
    def _logits(parts: nn.ModuleDict, images: Tensor) -> Tensor:
        return parts["head"](_tower_encode(parts, images).mean(dim=1))

    def forward(
        self,
        batch: ImageBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        views = augment_views(batch.images, self.config.views, 2, generator)
        flat = views.flatten(0, 1)
        n = batch.batch_size
        pooled = self.pooled(flat)
        student = self.head(pooled).view(2, n, -1)
        with torch.no_grad(), _batch_statistics(self._teacher_parts()):
            teacher = self._logits(self._teacher_parts(), flat).view(2, n, -1)
        record = self.objective(student, teacher, int(self.teacher.num_updates))
        metrics = {
            "ema_decay": torch.tensor(self.teacher.decay),
            "teacher_entropy": _mean_entropy(teacher - self.objective.center, self.config.teacher_temp),
            # spread of the pooled features across images: near 0, every image looks alike
            "embedding_std": feature_std(pooled[:n]),
        }  # fmt: skip
        return PretrainOutput(
            loss=record, metrics=metrics, num_frames=_num_patches_frames(batch, self, 2)
        )

    def _teacher_parts(self) -> nn.ModuleDict:
        parts = self.teacher.model
        assert isinstance(parts, nn.ModuleDict)
        return parts

    def after_optimizer_step(self, num_updates: int) -> None:
        self.teacher.update(_tower_parts(self.frontend, self.encoder, self.head), num_updates)


@contextlib.contextmanager
def _batch_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of the (always eval-mode) teacher normalise by the batch's own
    statistics, as DINO's teacher head does (its teacher runs in training mode)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.train()
    try:
        yield
    finally:
        for m in norms:
            m.eval()


def _across_images_std(x: Tensor) -> Tensor:
    """Mean over patches and dimensions of the std over images of ``x [N, P, D]``."""
    with torch.no_grad():
        if x.shape[0] < 2:
            return x.new_zeros((), dtype=torch.float32)
        return x.float().std(dim=0).mean()


def _mean_entropy(logits: Tensor, temperature: float) -> Tensor:
    """Mean entropy of ``softmax(logits / T)`` (a collapsing teacher goes to 0 or log K)."""
    with torch.no_grad():
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        return -(logp.exp() * logp).sum(-1).mean()


def build_dino_vision(config: DINOVisionConfig) -> DINOVisionModel:
    """Factory: front end, encoder, DINO head, objective; the teacher copies the student."""
    _check_encoder("dino", config.encoder)
    frontend = PatchFrontend(config.patch, config.encoder.dim, config.dropout_input)
    encoder = build_transformer_encoder(config.encoder)
    head = DINOHead(
        config.encoder.dim,
        config.out_dim,
        hidden_dim=config.head_hidden_dim,
        bottleneck_dim=config.head_bottleneck_dim,
        batch_norm=config.head_batch_norm,
    )
    objective = DINOObjective(
        config.out_dim,
        student_temp=config.student_temp,
        teacher_temp=config.teacher_temp,
        warmup_teacher_temp=config.warmup_teacher_temp,
        warmup_steps=config.teacher_temp_warmup_steps,
        center_momentum=config.center_momentum,
        gather_distributed=config.gather_distributed,
    )
    return DINOVisionModel(config, frontend, encoder, head, objective)


def dino_vision_tiny_config() -> DINOVisionConfig:
    """DINO on 8x8 digits: tiny ViT, head 128 -> 32 -> 256 prototypes with BatchNorm in the
    head's MLP (DINO's ``use_bn``), temperatures 0.1 / 0.04, centre momentum 0.9, EMA
    0.99 -> 1 over 1000 updates.

    Why BatchNorm: the mean-pooled output of the random-init tiny ViT barely differs
    between digits (per-dimension spread about 0.03, the sine-cosine positions dominate
    the 2x2 patches), so the teacher's logits differ between images by about 0.005;
    divided by the teacher temperature that is a near-uniform target once the centre has
    removed the common part, and the student followed it into uniform collapse (teacher
    entropy log K = 5.5 by step 50 at any learning rate tried, 71% validation probe).
    BatchNorm in the head separates the images before the prototypes (the teacher's uses
    the batch statistics, as DINO's training-mode teacher does). EMA 0.99 instead of
    0.996: a 300-update run needs a teacher that moves within it."""
    return DINOVisionConfig(head_batch_norm=True, ema_decay=0.99)


# --------------------------------------------------------------------------- MAE


@dataclass(kw_only=True)
class MAEVisionConfig:
    """MAE: encode the visible patches, reconstruct the hidden ones with a narrow decoder."""

    patch: PatchEmbeddingConfig = field(default_factory=digits_patches)
    """Image geometry and patch embedding."""
    encoder: TransformerEncoderConfig = field(default_factory=tiny_vision_encoder)
    """Transformer encoder (pre-LN, no conv position embedding)."""
    dropout_input: float = 0.0
    """Dropout on the embedded patches."""
    mask_ratio: float = 0.75
    """Fraction of patches hidden, uniformly at random (MAE's 75%)."""
    decoder: TransformerEncoderConfig = field(default_factory=narrow_encoder)
    """The decoder stack (narrower than the encoder)."""
    norm_pix: bool = True
    """Per-patch normalised pixel targets (MAE's better setting)."""

    def __post_init__(self) -> None:
        coerce_subconfigs(
            self,
            {"patch": PatchEmbeddingConfig, "encoder": TransformerEncoderConfig, "decoder": TransformerEncoderConfig},
        )  # fmt: skip
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")


class MAEVisionModel(PatchEncoderModel):
    """MAE on images: ``forward(ImageBatch)`` -> reconstruction loss on the hidden patches."""

    def __init__(
        self,
        config: MAEVisionConfig,
        frontend: PatchFrontend,
        encoder: TransformerEncoder,
        decoder: TransformerEncoder,
        objective: MAEObjective,
    ) -> None:
        super().__init__(frontend, encoder)
        self.config = config
        dd = config.decoder.dim
        self.decoder_embed = nn.Linear(config.encoder.dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(dd))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("decoder_position", sincos_2d(config.patch.grid, dd), persistent=False)  # fmt: skip
        self.decoder = decoder
        self.decoder_pred = nn.Linear(dd, config.patch.patch_dim)
        self.objective = objective

    decoder_position: Tensor

    def compute_mask(
        self, n: int, device: torch.device, generator: torch.Generator | None
    ) -> Tensor:
        """``[N, P]`` random mask with exactly ``round(mask_ratio * P)`` hidden patches."""
        return compute_block_mask(
            n, self.config.patch.grid, self.config.mask_ratio, block_size=(1, 1),
            generator=generator, device=device,
        )  # fmt: skip

    def forward(
        self,
        batch: ImageBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        x, patches = self.tokens(batch.images)
        n, p, _ = x.shape
        if mask is None:
            mask = self.compute_mask(n, x.device, generator)
        _, visible_idx = _mask_index(mask)
        latent = self.encoder(_gather_rows(x, visible_idx), None).last_hidden_state
        y = self.decoder_embed(latent)
        full = self.mask_token.to(y.dtype).expand(n, p, -1).clone()
        full = full.scatter(1, visible_idx.unsqueeze(-1).expand_as(y), y)
        full = full + self.decoder_position.to(full.dtype)
        pred = self.decoder_pred(self.decoder(full, None).last_hidden_state)
        record = self.objective(pred, patches, mask)
        metrics = {
            "mask_fraction": mask.float().mean().detach(),
            # spread across images of the pooled visible-patch latents (0: image-blind)
            "embedding_std": feature_std(latent.mean(dim=1)),
        }
        return PretrainOutput(loss=record, metrics=metrics, num_frames=n * p)


def build_mae_vision(config: MAEVisionConfig) -> MAEVisionModel:
    """Factory: front end, encoder, decoder stack, objective."""
    _check_encoder("mae", config.encoder)
    _check_encoder("mae decoder", config.decoder)
    frontend = PatchFrontend(config.patch, config.encoder.dim, config.dropout_input)
    return MAEVisionModel(
        config,
        frontend,
        build_transformer_encoder(config.encoder),
        build_transformer_encoder(config.decoder),
        MAEObjective(norm_pix=config.norm_pix),
    )


def mae_vision_tiny_config() -> MAEVisionConfig:
    """MAE on 8x8 digits: tiny ViT, 75% of the 16 patches hidden, 2-layer decoder of 32,
    normalised-pixel targets."""
    return MAEVisionConfig()


# --------------------------------------------------------------------------- I-JEPA


@dataclass(kw_only=True)
class IJEPAVisionConfig:
    """I-JEPA: predict the EMA target encoder's latents at target blocks from the context."""

    patch: PatchEmbeddingConfig = field(default_factory=digits_patches)
    """Image geometry and patch embedding."""
    encoder: TransformerEncoderConfig = field(default_factory=tiny_vision_encoder)
    """Context (and, by EMA, target) encoder: pre-LN, no conv position embedding."""
    dropout_input: float = 0.0
    """Dropout on the embedded patches."""
    target_mask: BlockMaskConfig = field(
        default_factory=lambda: BlockMaskConfig(mask_prob=0.5, block_size=(2, 2))
    )
    """The target blocks (exact count, so every image has as many); the context is every
    other patch. (I-JEPA draws 4 blocks of 15-20% and a context block of 85-100% minus the
    targets; on a 4x4 grid the blocks are the 2x2 squares.)"""
    predictor: TransformerEncoderConfig = field(default_factory=narrow_encoder)
    """The predictor stack (narrower than the encoder)."""
    distance: str = "smooth_l1"
    """``smooth_l1`` (the official code) or ``l2`` (the paper's text)."""
    ema_decay: float = 0.996
    """Target-encoder EMA decay at step 0."""
    ema_end_decay: float = 1.0
    """Target-encoder EMA decay at the end of the anneal."""
    ema_anneal_steps: int = 1000
    """Updates over which the decay goes from ``ema_decay`` to ``ema_end_decay``."""

    def __post_init__(self) -> None:
        coerce_subconfigs(
            self,
            {
                "patch": PatchEmbeddingConfig,
                "encoder": TransformerEncoderConfig,
                "target_mask": BlockMaskConfig,
                "predictor": TransformerEncoderConfig,
            },
        )
        if not self.target_mask.exact_count:
            raise ConfigError("ijepa: target_mask.exact_count must be true (batches are packed)")


class IJEPAVisionModel(PatchEncoderModel):
    """I-JEPA on images: context encoder, predictor, EMA target encoder."""

    def __init__(
        self,
        config: IJEPAVisionConfig,
        frontend: PatchFrontend,
        encoder: TransformerEncoder,
        predictor: TransformerEncoder,
        objective: JEPAObjective,
    ) -> None:
        super().__init__(frontend, encoder)
        self.config = config
        dp = config.predictor.dim
        self.predictor_embed = nn.Linear(config.encoder.dim, dp)
        self.mask_token = nn.Parameter(torch.zeros(dp))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("predictor_position", sincos_2d(config.patch.grid, dp), persistent=False)  # fmt: skip
        self.predictor = predictor
        self.predictor_proj = nn.Linear(dp, config.encoder.dim)
        self.objective = objective
        self.teacher = EMATeacher(
            _tower_parts(frontend, encoder, None),
            start=config.ema_decay,
            end=config.ema_end_decay,
            anneal_steps=config.ema_anneal_steps,
        )

    predictor_position: Tensor

    def forward(
        self,
        batch: ImageBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        x, _ = self.tokens(batch.images)
        n, p, _ = x.shape
        if mask is None:
            c = self.config.target_mask
            mask = compute_block_mask(
                n, self.config.patch.grid, c.mask_prob, block_size=c.block_size,
                generator=generator, device=x.device,
            )  # fmt: skip
        target_idx, context_idx = _mask_index(mask)
        with torch.no_grad():
            parts = self.teacher.model
            assert isinstance(parts, nn.ModuleDict)
            latents = _tower_encode(parts, batch.images)
            targets = _gather_rows(latents, target_idx)
        context = self.encoder(_gather_rows(x, context_idx), None).last_hidden_state
        pos = self.predictor_position.to(x.dtype).expand(n, -1, -1)
        ctx = self.predictor_embed(context) + _gather_rows(pos, context_idx)
        queries = self.mask_token.to(ctx.dtype) + _gather_rows(pos, target_idx)
        out = self.predictor(torch.cat([ctx, queries], dim=1), None).last_hidden_state
        pred = self.predictor_proj(out[:, ctx.shape[1] :])
        every = torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)
        record = self.objective(pred, targets, every)
        metrics = {
            "mask_fraction": mask.float().mean().detach(),
            "ema_decay": torch.tensor(self.teacher.decay),
            "target_std": feature_std(targets),
            # spread across images at a fixed patch position: 0 when the target latents
            # encode only where a patch is (a collapse target_std cannot see)
            "target_image_std": _across_images_std(latents),
            "embedding_std": feature_std(latents.mean(dim=1)),
        }
        return PretrainOutput(loss=record, metrics=metrics, num_frames=n * p)

    def after_optimizer_step(self, num_updates: int) -> None:
        self.teacher.update(_tower_parts(self.frontend, self.encoder, None), num_updates)


def build_ijepa_vision(config: IJEPAVisionConfig) -> IJEPAVisionModel:
    """Factory: front end, context encoder, predictor, objective; the target encoder is
    the EMA copy of the front end and context encoder."""
    _check_encoder("ijepa", config.encoder)
    _check_encoder("ijepa predictor", config.predictor)
    frontend = PatchFrontend(config.patch, config.encoder.dim, config.dropout_input)
    return IJEPAVisionModel(
        config,
        frontend,
        build_transformer_encoder(config.encoder),
        build_transformer_encoder(config.predictor),
        JEPAObjective(kind=config.distance),
    )


def ijepa_vision_tiny_config() -> IJEPAVisionConfig:
    """I-JEPA on 8x8 digits: tiny ViT, half the 4x4 grid as 2x2 target blocks, 2-layer
    predictor of 32, smooth-L1 on layer-normalised targets, EMA 0.996 -> 1 over 1000."""
    return IJEPAVisionConfig()


for _name, _family, _make, _build in (
    ("simclr_vision_tiny", "simclr_vision", simclr_vision_tiny_config, build_joint_embedding_vision),
    ("vicreg_vision_tiny", "vicreg_vision", vicreg_vision_tiny_config, build_joint_embedding_vision),
    ("barlow_twins_vision_tiny", "barlow_twins_vision", barlow_twins_vision_tiny_config, build_joint_embedding_vision),
    ("dino_vision_tiny", "dino_vision", dino_vision_tiny_config, build_dino_vision),
    ("mae_vision_tiny", "mae_vision", mae_vision_tiny_config, build_mae_vision),
    ("ijepa_vision_tiny", "ijepa_vision", ijepa_vision_tiny_config, build_ijepa_vision),
):  # fmt: skip
    register_model(_name, family=_family, make_config=_make, build=_build, size="tiny", modality="image")  # fmt: skip

__all__ = [
    "DINOVisionConfig",
    "DINOVisionModel",
    "IJEPAVisionConfig",
    "IJEPAVisionModel",
    "JointEmbeddingVisionConfig",
    "JointEmbeddingVisionModel",
    "MAEVisionConfig",
    "MAEVisionModel",
    "PatchEncoderModel",
    "build_dino_vision",
    "build_ijepa_vision",
    "build_joint_embedding_vision",
    "build_mae_vision",
]
