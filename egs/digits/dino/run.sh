#!/usr/bin/env bash
# DINO (student + EMA teacher, two augmented views) on scikit-learn's bundled 8x8 digits (1797
# images: tiny, a demo of the pipeline, not a benchmark), then a linear probe of the frozen
# encoder against a random-init one. conf/dino.conf lists each setting; ./run.sh --help lists
# every option. Relative paths are relative to this directory (the script runs from here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec ../../../recipes/image_ssl.sh --config conf/dino.conf "$@"
