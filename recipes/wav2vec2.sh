#!/usr/bin/env bash
# wav2vec 2.0 pretraining (contrastive, quantized targets): recipes/pretrain.sh with
# --family wav2vec2 (defaults: wav2vec2_base, 400k updates, 64-GPU batches).
exec "$(dirname "${BASH_SOURCE[0]}")/pretrain.sh" --family wav2vec2 "$@"
