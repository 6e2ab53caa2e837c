#!/usr/bin/env bash
# The README's test command: set up .venv with the dev extras, lint, type-check, run tests.
# Extra arguments go to pytest (e.g. `bash tools/test.sh -m slow`, `bash tools/test.sh -k fbank`).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/setup_env.sh dev
venv=${SPEECHSSL_VENV:-$root/.venv}
export PATH="$venv/bin:$PATH"
echo "[test] ruff" >&2
ruff check speechssl tests tools
echo "[test] mypy" >&2
mypy
echo "[test] pytest" >&2
exec python -m pytest "$@"
