"""Unit discovery: k-means on dumped features, unit labels, and unit-quality reports.

* :mod:`speechssl.units.kmeans` - streaming torch k-means in parts (config and schedule
  rule, model file format, k-means++ init, Lloyd, mini-batch, ``fit_kmeans``).
* :mod:`speechssl.units.stream` - bounded-memory reads of a feature store, deterministic
  sampling by utterance id.
* :mod:`speechssl.units.apply` - ``kmeans apply``: labels of a store, or straight from audio.
* :mod:`speechssl.units.labels` - the label directory format,
  :class:`~speechssl.units.labels.UnitLabels` with length checks.
* :mod:`speechssl.units.quality`, :mod:`speechssl.units.report`,
  :mod:`speechssl.units.plotting` - PNMI / purities, usage and durations, JSON + PNG.
* k-means' collectives come from :mod:`speechssl.distributed` (the one wrapper).
* :mod:`speechssl.units.patches` - patch units for image models (patches as a feature store).
* :mod:`speechssl.units.synthetic` - Gaussian-mixture stores for tests and benchmarks.
"""
