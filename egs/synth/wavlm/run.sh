#!/usr/bin/env bash
# WavLM on the bundled SYNTHETIC corpus (eSpeak NG): iteration-1 MFCC units as in the HuBERT
# recipe, then WavLM pretraining with utterance mixing. Scaled down to minutes on 2 CPU
# cores; conf/wavlm.conf lists each setting. ./run.sh --help lists every option.
# Relative paths are relative to this directory (the script runs from here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec ../../../recipes/wavlm.sh --config conf/wavlm.conf "$@"
