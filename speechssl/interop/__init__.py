"""Interoperability: weights to and from ``transformers``, ``torchaudio`` and fairseq."""
