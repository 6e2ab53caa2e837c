#!/usr/bin/env bash
# Label-free pretraining of speaker embeddings by DINO on two crops of each utterance: recipes/pretrain.sh with
# --family speaker_dino (defaults: recipes/conf/speaker_dino.conf).
exec "$(dirname "${BASH_SOURCE[0]}")/pretrain.sh" --family speaker_dino "$@"
