#!/usr/bin/env bash
# Create (or refresh) the project virtualenv with speechssl installed in editable mode.
# Usage: tools/setup_env.sh [EXTRAS]   e.g. tools/setup_env.sh dev
# Needs only python3 (>= 3.11) with venv and pip. Versions come from tools/constraints.txt.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
extras=${1:-}
py=${PYTHON:-python3}
venv=${SPEECHSSL_VENV:-$root/.venv}
spec="."
[ -n "$extras" ] && spec=".[$extras]"
want=$( (cat pyproject.toml tools/constraints.txt; echo "$spec") | sha256sum | cut -d' ' -f1)
stamp="$venv/.speechssl-stamp"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv" >&2
  "$py" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing speechssl$([ -n "$extras" ] && echo "[$extras]") (first time: ~2.6 GB, a few minutes)" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -c tools/constraints.txt -e "$spec"
  echo "$want" > "$stamp"
fi
