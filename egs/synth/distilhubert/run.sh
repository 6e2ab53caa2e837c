#!/usr/bin/env bash
# DistilHuBERT on the bundled SYNTHETIC corpus (eSpeak NG): distils the main job's
# iteration-2 HuBERT (../hubert/exp/hubert/iter2/train/final; run egs/synth/hubert first,
# or give --teacher DIR) into a 2-layer student, in minutes on 2 CPU cores;
# conf/distilhubert.conf lists each setting. ./run.sh --help lists every option.
# Relative paths are relative to this directory (the script runs from here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec ../../../recipes/distilhubert.sh --config conf/distilhubert.conf "$@"
