"""DistilHuBERT -> ``transformers.HubertModel`` (export only).

The student is HuBERT's waveform encoder with fewer layers (the same parameter names), so
the export reuses :mod:`.hubert`'s key map and config mapping unchanged: ``--bare`` writes a
plain 2-layer ``HubertModel``. The prediction heads (one linear layer per distilled teacher
layer) have no place in ``transformers`` and travel in the ``speechssl/`` side directory of
a default export, from which ``speechssl import hf`` restores the student exactly. A
``hubert`` directory without that side directory (a bare export) says nothing about
distillation and imports as HuBERT.
"""

from __future__ import annotations

import dataclasses

from speechssl.interop.hf import hubert

INTEROP = dataclasses.replace(
    hubert.INTEROP,
    family="distilhubert",
    # foreign hubert dirs import as HuBERT (see the module docstring)
    config_from_hf=None,
)
