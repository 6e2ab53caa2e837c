#!/usr/bin/env bash
# shellcheck disable=SC2034,SC2154  # option variables are set by opt/parse_options
# Probing task data of the bundled corpus: PR (phones from ali.phones), SID (split by
# utterance within speakers), KS (utt2keyword + generated _silence_ noise clips) and ASV
# (speaker-disjoint splits, dev/test trials), each
# as OUT/<task>/{train,dev,test}. SYNTHETIC speech: numbers on it are not results on real speech.
. "$(dirname "${BASH_SOURCE[0]}")/../../../recipes/utils/common.sh"
usage="Write the bundled corpus's probing task roots (speechssl probe prepare-synth)."
opt data_root data "the synth corpus (train/ dev/ test/)"
opt out data/probe "where the task roots go"
opt tasks pr,sid,ks,asv "tasks to prepare (pr,asr,ks,sid,asv,ic,qbe,sd)"
opt seed 0 "seed of the splits and the noise clips"
parse_options "$@"

speechssl probe prepare-synth --corpus "$data_root" --out "$out" --tasks "$tasks" --seed "$seed"
