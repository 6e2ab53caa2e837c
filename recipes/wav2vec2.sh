#!/usr/bin/env bash
# wav2vec 2.0 pretraining (contrastive, quantized targets): recipes/pretrain.sh with
# --family wav2vec2 (defaults: recipes/conf/wav2vec2.conf).
exec "$(dirname "${BASH_SOURCE[0]}")/pretrain.sh" --family wav2vec2 "$@"
