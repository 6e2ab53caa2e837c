#!/usr/bin/env bash
# The GPU suite: one unattended command for one H100/H200 that prints JSON lines for
#   1. fused Triton fbank (and MFCC) vs torchaudio on the GPU: ratio, and achieved bandwidth
#      of each pass against the HBM peak (tools/bench/features.py --no-cpu);
#   2. one k-means Lloyd iteration at 768-d, K=500, on the largest frame count that fits the
#      time budget, against the FLOP bound 2*N*D*K / (measured matmul rate)
#      (tools/bench/kmeans.py gpu);
#   3. a HuBERT Base bf16 training step, ours vs torchaudio's hubert_pretrain_base on the same
#      batch: audio-s/s, ratio and MFU (tools/bench/train_step.py).
# Targets (issue 21): fbank >= 20x torchaudio-on-GPU; Lloyd <= 3x the FLOP bound; HuBERT step
# >= 1.3x torchaudio and >= 30% MFU. The whole suite is sized to finish in under 8 minutes.
#
# Usage: bash tools/bench/gpu.sh [OUT_DIR]    (JSON lines also go to OUT_DIR/gpu.jsonl)
# Environment: PYTHON (default: .venv/bin/python if it exists, else python3);
#   SPEECHSSL_WHEELS: a folder of wheels installed (pip --no-index) when a package is missing
#   (the device machines reach no registry); otherwise missing packages come from PyPI.
# Exits 2 with the reason when there is no CUDA device, 3 when a dependency is missing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${1:-${OUT:-$root/exp/gpu_suite}}
mkdir -p "$out"
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

need="torch torchaudio triton numpy soundfile safetensors omegaconf hydra transformers"
missing=$("$py" - "$need" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1].split() if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  read -r -a pkgs <<< "${missing//hydra/hydra-core}"
  echo "[gpu] installing missing packages: ${pkgs[*]}" >&2
  if [ -n "${SPEECHSSL_WHEELS:-}" ]; then
    "$py" -m pip install -q --no-index --find-links "$SPEECHSSL_WHEELS" "${pkgs[@]}" \
      || { echo "gpu.sh: error: cannot install ${pkgs[*]} from $SPEECHSSL_WHEELS" >&2; exit 3; }
  else
    "$py" -m pip install -q -c tools/constraints.txt "${pkgs[@]}" \
      || { echo "gpu.sh: error: cannot install ${pkgs[*]} (no registry? set SPEECHSSL_WHEELS)" >&2; exit 3; }
  fi
fi

if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu.sh: error: no CUDA device is visible to $py (torch.cuda.is_available() is False); the GPU suite needs one H100/H200" >&2
  exit 2
fi

log="$out/gpu.jsonl"
: > "$log"
run() {  # run NAME TIMEOUT_S CMD...: one case, its JSON lines appended to the log
  local name=$1 limit=$2
  shift 2
  echo "[gpu] $name" >&2
  if ! timeout "$limit" "$@" | tee -a "$log"; then
    echo "{\"what\": \"$name\", \"error\": \"failed or exceeded ${limit}s\"}" | tee -a "$log"
  fi
}

"$py" -c 'import json, torch; print(json.dumps({"what": "device", "name": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}))' | tee -a "$log"
run features 150 "$py" tools/bench/features.py --no-cpu --repeats 20 --gpu-batch-repeat 8
run kmeans_lloyd 120 "$py" tools/bench/kmeans.py gpu --device cuda --dim 768 --k 500 --frames 8000000
run hubert_base_bf16 180 "$py" tools/bench/train_step.py --model hubert_base --device cuda \
  --precision bf16 --batch 8 --seconds 15 --steps 10 --warmup 3
echo "[gpu] done: $log" >&2
