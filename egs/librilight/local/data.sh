#!/usr/bin/env bash
# shellcheck disable=SC2034,SC2154  # option variables are set by opt/parse_options
# Data preparation of Libri-Light from its distributed layout
# (CORPUS/<subset>/<speaker>/<book>/<file>.flac + .json): one Kaldi data dir per subset,
# combined into --train-name (ll_60k: small + medium + large), plus LibriSpeech splits for
# validation through egs/librispeech/local/data.sh.
. "$(dirname "${BASH_SOURCE[0]}")/../../../recipes/utils/common.sh"
usage="Prepare Libri-Light data dirs (speechssl data prepare-librilight)."
opt data_root data "where the data dirs go"
opt corpus_dir "" "Libri-Light root, the directory holding small/ medium/ large/ (required)"
opt subsets "small medium large" "subsets combined into the training set"
opt train_name ll_60k "name of the combined training data dir"
opt max_segment 30 "cut recordings into segments of at most this many seconds (packing voice activity)"
opt librispeech_dir "" "LibriSpeech root for the validation splits (empty: none)"
opt librispeech_splits "dev-other" "LibriSpeech splits prepared for validation"
parse_options "$@"

[[ -n $corpus_dir ]] || die "--corpus-dir is required (the Libri-Light root holding small/ ...)"
[[ -d $corpus_dir ]] || die "--corpus-dir $corpus_dir: no such directory"
for subset in $subsets; do
  [[ -d $corpus_dir/$subset ]] || die "$corpus_dir/$subset: no such subset directory"
done
parts=()
for subset in $subsets; do
  speechssl data prepare-librilight --corpus-dir "$corpus_dir" --subset "$subset" \
    --max-segment "$max_segment" --out "$data_root/ll_$subset"
  parts+=("$data_root/ll_$subset")
done
speechssl data combine --overwrite --out "$data_root/$train_name" "${parts[@]}"
if [[ -n $librispeech_dir ]]; then
  "$(dirname "${BASH_SOURCE[0]}")/../../librispeech/local/data.sh" --data-root "$data_root" \
    --corpus-dir "$librispeech_dir" --train-splits "" --other-splits "$librispeech_splits"
fi
