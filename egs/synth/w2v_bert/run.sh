#!/usr/bin/env bash
# w2v-BERT on the bundled SYNTHETIC corpus (eSpeak NG), scaled down to minutes on 2 CPU
# cores; conf/w2v_bert.conf lists each setting. ./run.sh --help lists every option.
# Relative paths are relative to this directory (the script runs from here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec ../../../recipes/w2v_bert.sh --config conf/w2v_bert.conf "$@"
