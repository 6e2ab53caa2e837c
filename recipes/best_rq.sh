#!/usr/bin/env bash
# BEST-RQ pretraining (masked prediction of random-projection quantized fbank): recipes/pretrain.sh
# with --family best_rq (defaults: recipes/conf/best_rq.conf).
exec "$(dirname "${BASH_SOURCE[0]}")/pretrain.sh" --family best_rq "$@"
