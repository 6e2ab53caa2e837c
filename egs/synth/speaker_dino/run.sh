#!/usr/bin/env bash
# Speaker embeddings by DINO on two crops of each utterance, on the bundled SYNTHETIC corpus (eSpeak NG), minutes on 2 CPU cores;
# conf/speaker_dino.conf lists each setting. ./run.sh --help lists every option.
# Relative paths are relative to this directory (the script runs from here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec ../../../recipes/speaker_dino.sh --config conf/speaker_dino.conf "$@"
