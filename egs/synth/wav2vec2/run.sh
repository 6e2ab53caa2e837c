#!/usr/bin/env bash
# wav2vec 2.0 on the bundled SYNTHETIC corpus (eSpeak NG), scaled down to minutes on 2 CPU
# cores; conf/wav2vec2.conf lists each setting. ./run.sh --help lists every option.
# Relative paths are relative to this directory (the script runs from here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec ../../../recipes/wav2vec2.sh --config conf/wav2vec2.conf "$@"
