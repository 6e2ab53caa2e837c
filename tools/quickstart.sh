#!/usr/bin/env bash
# The README's main-job command: set up .venv (tools/setup_env.sh), then run the HuBERT
# recipe on the bundled synthetic corpus (egs/synth/hubert/run.sh) end to end and print its
# results table. Extra arguments go to the recipe (e.g. --stage 6, --help). Rerunning
# resumes: finished stages are skipped.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/setup_env.sh
venv=${SPEECHSSL_VENV:-$root/.venv}
export PATH="$venv/bin:$PATH"
exec bash egs/synth/hubert/run.sh "$@"
