#!/usr/bin/env bash
# HuBERT Large on Libri-Light 60k h with the published settings (conf/hubert.conf): one
# iteration on K=500 units of layer 9 of the LibriSpeech HuBERT Base iteration-2 model
# (egs/librispeech/hubert), 400k updates, batches of 128 GPUs x 56.25 s. Layer features
# are dumped in float16 shards on many GPU jobs; k-means runs on several nodes.
# Corpora are looked for in downloads/; elsewhere:
#   ./run.sh --local-data-opts "--corpus-dir /path/to/librilight --librispeech-dir /path/to/LibriSpeech"
# ./run.sh --help lists every option; relative paths are relative to this directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec ../../../recipes/hubert.sh --config conf/hubert.conf "$@"
