#!/usr/bin/env bash
# shellcheck disable=SC2034,SC2154  # option variables are set by opt/parse_options
# Data preparation of LibriSpeech from its distributed layout
# (CORPUS/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + *.trans.txt):
# one Kaldi data dir per split (dashes become underscores: data/dev_other), and the
# training splits combined into --train-name (train_960 by default).
. "$(dirname "${BASH_SOURCE[0]}")/../../../recipes/utils/common.sh"
usage="Prepare LibriSpeech data dirs (speechssl data prepare-librispeech)."
opt data_root data "where the data dirs go"
opt corpus_dir "" "LibriSpeech root, the directory holding train-clean-100/ dev-other/ ... (required)"
opt train_splits "train-clean-100 train-clean-360 train-other-500" "splits combined into the training set (empty: none)"
opt train_name train_960 "name of the combined training data dir"
opt other_splits "dev-clean dev-other" "further splits prepared on their own (validation, test)"
parse_options "$@"

[[ -n $corpus_dir ]] || die "--corpus-dir is required (the LibriSpeech root holding train-clean-100/ ...)"
[[ -d $corpus_dir ]] || die "--corpus-dir $corpus_dir: no such directory"
for split in $train_splits $other_splits; do
  [[ -d $corpus_dir/$split ]] || die "$corpus_dir/$split: no such split directory"
done
parts=()
for split in $train_splits $other_splits; do
  speechssl data prepare-librispeech --corpus-dir "$corpus_dir" --split "$split" \
    --out "$data_root/${split//-/_}"
done
for split in $train_splits; do parts+=("$data_root/${split//-/_}"); done
if ((${#parts[@]})); then
  speechssl data combine --overwrite --out "$data_root/$train_name" "${parts[@]}"
fi
