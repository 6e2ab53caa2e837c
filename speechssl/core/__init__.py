"""Modality-agnostic SSL building blocks: masking, encoders, quantizers, EMA, objectives."""

from speechssl.core.frames import Frames
from speechssl.core.loss import LossRecord

__all__ = ["Frames", "LossRecord"]
