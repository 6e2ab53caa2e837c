"""Scalable k-means in torch (CPU and CUDA, one code path), streaming over a feature store.

The parts, each a module:

* :mod:`~speechssl.units.kmeans.config` - :class:`KMeansConfig` (validated on
  construction), the default schedule rule chosen from the data's size and dimension, and
  the "same fit already exists" rule of reruns.
* :mod:`~speechssl.units.kmeans.model` - :class:`KMeansModel` and its file format (checked on
  load: checksum, tensor names, dtypes, shapes, finite values).
* :mod:`~speechssl.units.kmeans.init` - the sample, greedy k-means++ restarts in lockstep.
* :mod:`~speechssl.units.kmeans.lloyd` - the assignment kernel, streaming passes,
  empty-cluster splitting, the Lloyd loop.
* :mod:`~speechssl.units.kmeans.minibatch` - mini-batch updates (alone, or as a start).
* :mod:`~speechssl.units.kmeans.data` - this process's frames (streamed or cached), finite
  checks naming the utterance.
* :mod:`~speechssl.units.kmeans.fit` - :func:`fit_kmeans`, which strings them together.

Memory is bounded by a few blocks of ``block_frames`` rows plus the ``[chunk, k]`` distance
matrix, independent of the corpus size; ``cache_gb`` optionally keeps the (raw) data in RAM or
on the GPU between iterations when it fits.
"""

from speechssl.units.kmeans.config import (
    LOW_DIM,
    MODES,
    NORMALIZATIONS,
    SMALL_WORK,
    KMeansConfig,
    resolve_schedule,
    schedule_name,
)
from speechssl.units.kmeans.data import FeatureValueError
from speechssl.units.kmeans.fit import FitResult, fit_kmeans
from speechssl.units.kmeans.init import kmeans_plusplus
from speechssl.units.kmeans.lloyd import assign_nearest, default_chunk_elems
from speechssl.units.kmeans.model import (
    MODEL_FORMAT,
    MODEL_META,
    MODEL_WEIGHTS,
    KMeansError,
    KMeansModel,
)

__all__ = [
    "LOW_DIM",
    "MODEL_FORMAT",
    "MODEL_META",
    "MODEL_WEIGHTS",
    "MODES",
    "NORMALIZATIONS",
    "SMALL_WORK",
    "FeatureValueError",
    "FitResult",
    "KMeansConfig",
    "KMeansError",
    "KMeansModel",
    "assign_nearest",
    "default_chunk_elems",
    "fit_kmeans",
    "kmeans_plusplus",
    "resolve_schedule",
    "schedule_name",
]
