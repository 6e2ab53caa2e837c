#!/usr/bin/env bash
# Label-free pretraining of speaker embeddings by VICReg on two crops of each utterance: recipes/pretrain.sh with
# --family speaker_vicreg (defaults: recipes/conf/speaker_vicreg.conf).
exec "$(dirname "${BASH_SOURCE[0]}")/pretrain.sh" --family speaker_vicreg "$@"
