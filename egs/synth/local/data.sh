#!/usr/bin/env bash
# shellcheck disable=SC2034,SC2154  # option variables are set by opt/parse_options
# Data preparation of the bundled corpus: synthesize it with eSpeak NG into --data-root
# (Kaldi data dirs train/ dev/ test/ with frame-level phone alignments ali.phones).
# SYNTHETIC speech: numbers on it are never results on real speech (see local/README.md).
. "$(dirname "${BASH_SOURCE[0]}")/../../../recipes/utils/common.sh"
usage="Synthesize the bundled corpus (speechssl data synth)."
opt data_root data "corpus directory to create (train/ dev/ test/ inside)"
opt hours 1.0 "hours of audio over all splits"
opt seed 0 "corpus seed"
opt nj 2 "synthesis worker processes"
opt synth_opts "" "extra options for 'speechssl data synth' (e.g. --noise --reverb)"
parse_options "$@"

# shellcheck disable=SC2086  # synth_opts is a list of words
speechssl data synth --out "$data_root" --hours "$hours" --seed "$seed" --nj "$nj" $synth_opts
