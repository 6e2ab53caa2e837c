#!/usr/bin/env bash
# SSAST: masked fbank patches, discriminative + reconstruction loss, on the bundled SYNTHETIC corpus (eSpeak NG), minutes on 2 CPU cores;
# conf/ssast.conf lists each setting. ./run.sh --help lists every option.
# Relative paths are relative to this directory (the script runs from here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec ../../../recipes/ssast.sh --config conf/ssast.conf "$@"
