#!/usr/bin/env bash
# Label-free pretraining of SSAST masked spectrogram patch modelling: recipes/pretrain.sh with
# --family ssast (defaults: recipes/conf/ssast.conf).
exec "$(dirname "${BASH_SOURCE[0]}")/pretrain.sh" --family ssast "$@"
