#!/usr/bin/env bash
# The CPU suite of issue 21: one unattended command that reruns every CPU figure on 2 threads
# and writes them as JSON lines (one file per part) into docs/results/bench/cpu_suite/:
#   features.jsonl   fused numba fbank and MFCC vs torchaudio.compliance.kaldi per utterance
#                    (64 utterances of 2-20 s, and one 15 s utterance), interleaved, plus a
#                    profile line per feature with the FFT's share of our time
#                    (tools/bench/features.py --peers torchaudio --profile);
#   loader.jsonl     the w2v-BERT fbank front end in one data-loader worker: audio-s/s per
#                    worker, numba vs torch path vs loading alone (tools/bench/loader.py);
#   kmeans39.jsonl   `speechssl kmeans fit` defaults vs scikit-learn MiniBatchKMeans
#                    (fairseq's settings), 39-d MFCC of the SYNTHETIC corpus, K=100, 1M frames;
#   kmeans768.jsonl  the same default at 768-d K=500, 200k frames (Gaussian mixture). The
#                    scikit-learn peer alone takes about 10 minutes there (612 s on a quiet
#                    2-core machine), so by default ours is compared with that recorded run on
#                    the same generated data (docs/results/bench/kmeans_fit768c.jsonl, same
#                    seed, same frames: the inertias are directly comparable; the line says
#                    "peer_source": "recorded"); --full times the peer here too;
#   train_step.jsonl one hubert_tiny CPU train step (the main job's model) vs torchaudio's
#                    HuBERT on the same batch (tools/bench/train_step.py);
#   suite.jsonl      the machine (cores, load average before and after each part), commit and
#                    each part's wall time.
# Sized for <= 12 minutes on a quiet 2-core machine without --full (it took 2 m 32 s on one
# at commit 60379bb; about 10 more with --full); suite.jsonl records each part.
#
# Usage: bash tools/bench/cpu_suite.sh [--out DIR] [--only PARTS] [--full] [--dry-run]
#   --out DIR     where the .jsonl files go (default: docs/results/bench/cpu_suite)
#   --only PARTS  comma list of parts to run (features,loader,kmeans39,kmeans768,train_step)
#   --full        also time scikit-learn on the 768-d case (about 10 more minutes)
#   --dry-run     print the commands, run nothing
# Environment: PYTHON (default: .venv/bin/python if it exists, else python3).
# Run it from a fresh clone after `bash tools/setup_env.sh dev`; nothing is downloaded.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

parts_all="features,loader,kmeans39,kmeans768,train_step"
out="$root/docs/results/bench/cpu_suite"
only=$parts_all
full=0
dry=0
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "cpu_suite.sh: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --only) [ $# -ge 2 ] || die "--only needs a comma list of parts ($parts_all)"; only=$2; shift 2 ;;
    --full) full=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help: --out DIR, --only PARTS, --full, --dry-run)" ;;
  esac
done
IFS=, read -r -a parts <<< "$only"
[ ${#parts[@]} -gt 0 ] || die "--only is empty; parts: $parts_all"
for p in "${parts[@]}"; do
  case ",$parts_all," in
    *",$p,"*) ;;
    *) die "unknown part '$p' in --only; parts: $parts_all" ;;
  esac
done

py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# every figure of the issue is on 2 threads
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 NUMBA_NUM_THREADS=2

tmp=${TMPDIR:-/tmp}/speechssl_cpu_suite.$$
sk768="$root/docs/results/bench/kmeans_fit768c.jsonl"

# the command of each part, into the array cmd (so arguments keep their quoting)
set_cmd() {
  case $1 in
    features) cmd=("$py" tools/bench/features.py --threads 2 --repeats 3 --peers torchaudio
      --profile) ;;
    loader) cmd=("$py" tools/bench/loader.py --utts 24 --repeats 3 --workers 1) ;;
    kmeans39) cmd=("$py" tools/bench/kmeans.py fit --frames 1000000 --dim 39 --k 100
      --data synth-mfcc --ours '{"default": {}}' --peers sklearn --threads 2 --repeats 3
      --peer-repeats 3 --tmp "$tmp") ;;
    kmeans768)
      cmd=("$py" tools/bench/kmeans.py fit --frames 200000 --dim 768 --k 500 --data gmm
        --ours '{"default": {}}' --threads 2 --repeats 3 --tmp "$tmp")
      if [ "$full" = 1 ]; then
        cmd+=(--peers sklearn --peer-repeats 1)
      else
        cmd+=(--peers '' --recorded-peer "$sk768")
      fi ;;
    train_step) cmd=("$py" tools/bench/train_step.py --model hubert_tiny --batch 8 --seconds 4
      --steps 10 --warmup 3) ;;
  esac
}
cmd=()

if [ "$dry" = 1 ]; then
  for p in "${parts[@]}"; do
    set_cmd "$p"
    printf '%s:' "$p"
    printf ' %q' "${cmd[@]}"
    printf ' > %q\n' "$out/$p.jsonl"
  done
  exit 0
fi

mkdir -p "$out" "$tmp"
trap 'rm -rf "$tmp"' EXIT
suite="$out/suite.jsonl"
load() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null | tr ' ' ','; }
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "{\"what\": \"cpu_suite\", \"commit\": \"$commit\", \"cores\": $(nproc), \"date\": \"$(date -u +%FT%TZ)\", \"full\": $full, \"parts\": \"$only\"}" > "$suite"
status=0
for p in "${parts[@]}"; do
  set_cmd "$p"
  echo "[cpu_suite] $p (load $(load))" >&2
  before=$(load)
  start=$(date +%s)
  if "${cmd[@]}" > "$out/$p.jsonl"; then rc=0; else rc=$?; status=1; fi
  echo "{\"what\": \"part\", \"part\": \"$p\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - start )), \"load_before\": [$before], \"load_after\": [$(load)]}" >> "$suite"
  cat "$out/$p.jsonl"
done
echo "[cpu_suite] done: $out (exit $status)" >&2
exit "$status"
