#!/usr/bin/env bash
# DistilHuBERT (a 2-layer student distilled layer to layer from a frozen teacher):
# recipes/pretrain.sh with --family distilhubert (defaults: recipes/conf/distilhubert.conf);
# --teacher DIR names the teacher (a speechssl model dir, e.g. a HuBERT run's train/final).
exec "$(dirname "${BASH_SOURCE[0]}")/pretrain.sh" --family distilhubert "$@"
