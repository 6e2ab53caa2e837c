"""Kaldi-compatible features (fbank, MFCC, spectrogram, deltas, CMVN) and corpus-scale dumping."""
