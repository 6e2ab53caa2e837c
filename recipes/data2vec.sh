#!/usr/bin/env bash
# data2vec pretraining (audio: EMA teacher, regression of its averaged top layers):
# recipes/pretrain.sh with --family data2vec (defaults: recipes/conf/data2vec.conf).
exec "$(dirname "${BASH_SOURCE[0]}")/pretrain.sh" --family data2vec "$@"
