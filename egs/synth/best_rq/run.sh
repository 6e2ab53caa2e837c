#!/usr/bin/env bash
# BEST-RQ on the bundled SYNTHETIC corpus (eSpeak NG), scaled down to minutes on 2 CPU
# cores; conf/best_rq.conf lists each setting. ./run.sh --help lists every option.
# Relative paths are relative to this directory (the script runs from here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec ../../../recipes/best_rq.sh --config conf/best_rq.conf "$@"
