"""SUPERB-style downstream probing: frozen upstreams (speechssl models, local ``transformers``
models, Kaldi fbank/MFCC baselines), a learned weighted sum of their layers, cached layers,
task heads (PR, KS, SID, ...) trained with :class:`speechssl.train.trainer.TrainLoop`.

See ``docs/probing.md``. Submodules are imported explicitly (this file imports none).
"""
