"""BEST-RQ -> ``transformers.Wav2Vec2BertModel`` (export only).

BEST-RQ's front end and conformer stack are w2v-BERT's (same parameter names), so the
export reuses :mod:`.w2v_bert`'s key map, config mapping and ``SeamlessM4TFeatureExtractor``
unchanged: ``--bare`` writes a plain ``Wav2Vec2BertModel``. The random-projection
quantizers (projection, codebook and feature statistics, all frozen buffers) and the
classifiers have no place in ``transformers`` and travel in the ``speechssl/`` side
directory of a default export, from which ``speechssl import hf`` restores the BEST-RQ
model exactly. A ``Wav2Vec2Bert`` directory without that side directory (a bare export, a
published checkpoint) says nothing about BEST-RQ and imports as w2v-BERT.
"""

from __future__ import annotations

import dataclasses

from speechssl.interop.hf import w2v_bert

INTEROP = dataclasses.replace(
    w2v_bert.INTEROP,
    family="best_rq",
    # foreign wav2vec2-bert dirs import as w2v-BERT (see the module docstring)
    config_from_hf=None,
)
