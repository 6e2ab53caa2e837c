"""Objectives: pure functions with documented shapes plus thin modules returning a
:class:`~speechssl.core.loss.LossRecord` with every term."""

from speechssl.core.objectives.contrastive import (
    ContrastiveObjective,
    contrastive_accuracy,
    info_nce_logits,
    info_nce_loss,
    sample_distractors,
)
from speechssl.core.objectives.dino import (
    DINOObjective,
    dino_center,
    dino_loss,
    teacher_temperature,
)
from speechssl.core.objectives.joint_embedding import (
    BarlowTwinsObjective,
    NTXentObjective,
    VICRegObjective,
    barlow_twins_loss,
    cross_correlation,
    nt_xent_accuracy,
    nt_xent_logits,
    nt_xent_loss,
    vicreg_loss,
    vicreg_terms,
)
from speechssl.core.objectives.latent_prediction import JEPAObjective, jepa_loss
from speechssl.core.objectives.masked_prediction import (
    IGNORE_INDEX,
    MaskedPredictionHead,
    MaskedPredictionObjective,
    cosine_logits,
    masked_accuracy,
    masked_prediction_loss,
)
from speechssl.core.objectives.reconstruction import (
    MAEObjective,
    SSASTObjective,
    mae_loss,
    normalize_patches,
    patch_discrimination_loss,
)
from speechssl.core.objectives.regression import (
    RegressionObjective,
    feature_std,
    regression_loss,
)

__all__ = [
    "IGNORE_INDEX",
    "BarlowTwinsObjective",
    "ContrastiveObjective",
    "DINOObjective",
    "JEPAObjective",
    "MAEObjective",
    "MaskedPredictionHead",
    "MaskedPredictionObjective",
    "NTXentObjective",
    "RegressionObjective",
    "SSASTObjective",
    "VICRegObjective",
    "barlow_twins_loss",
    "contrastive_accuracy",
    "cosine_logits",
    "cross_correlation",
    "dino_center",
    "dino_loss",
    "feature_std",
    "info_nce_logits",
    "info_nce_loss",
    "jepa_loss",
    "mae_loss",
    "masked_accuracy",
    "masked_prediction_loss",
    "normalize_patches",
    "nt_xent_accuracy",
    "nt_xent_logits",
    "nt_xent_loss",
    "patch_discrimination_loss",
    "regression_loss",
    "sample_distractors",
    "teacher_temperature",
    "vicreg_loss",
    "vicreg_terms",
]
