#!/usr/bin/env bash
# HuBERT Base on LibriSpeech 960 h with the published settings (conf/hubert.conf): K=100 on
# MFCC (k-means on 10% of train-960), 250k updates; K=500 on layer 6 of iteration 1, 400k
# updates; batches of 32 GPUs x 87.5 s, reached by gradient accumulation on fewer GPUs.
# The corpus is looked for in downloads/LibriSpeech; elsewhere:
#   ./run.sh --local-data-opts "--corpus-dir /path/to/LibriSpeech"
# ./run.sh --help lists every option; relative paths are relative to this directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec ../../../recipes/hubert.sh --config conf/hubert.conf "$@"
