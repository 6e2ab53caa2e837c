#!/usr/bin/env bash
# HuBERT on the bundled SYNTHETIC corpus (eSpeak NG): the README's main job.
# Settings are scaled down from the published ones to finish in minutes on 2 CPU cores;
# conf/hubert.conf lists each one. Any option can be changed on the command line
# (./run.sh --help lists them all), e.g. ./run.sh --stage 6 --iter1-steps 500.
# Relative paths are relative to this directory (the script runs from here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec ../../../recipes/hubert.sh --config conf/hubert.conf "$@"
