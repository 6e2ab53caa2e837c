"""Objectives: pure functions with documented shapes plus thin modules returning a
:class:`~speechssl.core.loss.LossRecord` with every term."""

from speechssl.core.objectives.contrastive import (
    ContrastiveObjective,
    contrastive_accuracy,
    info_nce_logits,
    info_nce_loss,
    sample_distractors,
)
from speechssl.core.objectives.masked_prediction import (
    IGNORE_INDEX,
    MaskedPredictionHead,
    MaskedPredictionObjective,
    cosine_logits,
    masked_accuracy,
    masked_prediction_loss,
)
from speechssl.core.objectives.regression import (
    RegressionObjective,
    feature_std,
    regression_loss,
)

__all__ = [
    "IGNORE_INDEX",
    "ContrastiveObjective",
    "MaskedPredictionHead",
    "MaskedPredictionObjective",
    "RegressionObjective",
    "contrastive_accuracy",
    "cosine_logits",
    "feature_std",
    "info_nce_logits",
    "info_nce_loss",
    "masked_accuracy",
    "masked_prediction_loss",
    "regression_loss",
    "sample_distractors",
]
