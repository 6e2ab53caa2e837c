#!/usr/bin/env bash
# wav2vec 2.0 Base on LibriSpeech 960 h with the published settings (conf/wav2vec2.conf):
# 400k updates, batches of 64 GPUs x 87.5 s, reached by gradient accumulation on fewer GPUs.
# The corpus is looked for in downloads/LibriSpeech; elsewhere:
#   ./run.sh --local-data-opts "--corpus-dir /path/to/LibriSpeech"
# ./run.sh --help lists every option; relative paths are relative to this directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec ../../../recipes/wav2vec2.sh --config conf/wav2vec2.conf "$@"
