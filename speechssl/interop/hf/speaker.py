"""The speaker-embedding families (``speaker_dino``, ``speaker_vicreg``) have no
``transformers`` export, and say so.

Their encoder is a stacked log-mel fbank front end (40 bins, 2 frames stacked, projected)
feeding a post-LN transformer with a convolutional position embedding. No ``transformers``
class has that combination: the wav2vec 2.0-style classes with this encoder take a waveform
through a conv stack, and the fbank-fed ones (``Wav2Vec2BertModel``, ``Speech2Text``) have
conformer or sinusoidal-position encoders. A near match would change the hidden states, so
``speechssl export hf`` refuses in one line and names what works instead: the speechssl
model dir itself, which ``speechssl-probe upstream=DIR``,
:func:`speechssl.models.io.load_model_dir` and ``speechssl-train model.init_from=DIR`` read.
"""

from __future__ import annotations

#: family -> why ``transformers`` cannot hold it and what to use instead (one line)
NO_TRANSFORMERS_CLASS = {
    family: (
        f"{family}: no transformers class has its encoder (stacked fbank -> conv positions -> "
        "post-LN transformer), so it is not exported; use its speechssl model dir "
        "(e.g. EXP/train/final) directly: speechssl-probe upstream=DIR and "
        "speechssl.models.io.load_model_dir(DIR) load it"
    )
    for family in ("speaker_dino", "speaker_vicreg")
}
