#!/usr/bin/env bash
# w2v-BERT pretraining (contrastive + masked prediction): recipes/pretrain.sh with
# --family w2v_bert (defaults: recipes/conf/w2v_bert.conf).
exec "$(dirname "${BASH_SOURCE[0]}")/pretrain.sh" --family w2v_bert "$@"
