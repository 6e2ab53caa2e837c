#!/usr/bin/env bash
# WavLM pretraining: the HuBERT recipe (recipes/hubert.sh: offline k-means units, masked
# prediction, iterated) with WavLM models, which add the gated relative position bias and
# utterance mixing (speechssl/models/wavlm.py). Defaults: WavLM Base on LibriSpeech 960 h
# (HuBERT Base's schedule and units); every flag given after these wins, e.g. --iter1-model.
exec "$(dirname "${BASH_SOURCE[0]}")/hubert.sh" \
  --exp-dir exp/wavlm --iter1-model wavlm_base --iter2-model wavlm_base "$@"
