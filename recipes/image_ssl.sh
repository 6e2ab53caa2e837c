#!/usr/bin/env bash
# shellcheck disable=SC2034,SC2154  # option variables are set by opt/parse_options
# Image SSL pretraining -> linear probe, corpus-agnostic: pretrain an image model
# (simclr/vicreg/barlow_twins/dino/mae/ijepa/data2vec/hubert _vision_tiny) with
# speechssl-train (data=images) on an image folder (one subdirectory per class) or
# builtin:digits, then probe its frozen features with a logistic regression against a
# random-init encoder of the same preset. An egs/<corpus>/<method>/run.sh calls it from its
# own directory (conf/ and cmd.sh are looked up there).
#
# Layout of --exp-dir:
#   train/      the pretraining experiment (final/: the model, log.jsonl, checkpoints)
#   probe/      probe.json, probe.md (pretrained vs random init)
#   logs/       one log per stage; .stages/: done sentinels
. "$(dirname "${BASH_SOURCE[0]}")/utils/common.sh"
. "$recipe_utils_dir/common_stages.sh" # show_results

usage="Image SSL: pretrain -> linear probe of the frozen encoder vs a random-init one."

stage_options
opt model "" "image model preset (speechssl/configs/model/NAME.yaml), e.g. simclr_vision_tiny"
opt data builtin:digits "image folder (ROOT/<class>/<image>) or builtin:digits"
opt exp_dir "" "experiment directory (empty: exp/MODEL)"
opt steps 300 "pretraining updates"
opt batch_size 64 "images per batch"
opt train_cmd launch_local.sh "launcher for pretraining (see cmd.sh)"
opt train_args "optim=tiny trainer=cpu_demo" "extra speechssl-train overrides"
opt probe_train_fraction 0.5565 "leading share of the id-sorted images that trains the probe (digits: the first 1000)"
opt python python "Python interpreter with speechssl installed"

add_stage 1 train "pretrain (speechssl-train, data=images)"
add_stage 2 probe "linear probe: pretrained vs random-init encoder"

stage_train() {
  # shellcheck disable=SC2086
  run_jobs "$train_cmd" "$logs/train.log" \
    "$python" -m speechssl.train "model=$model" data=images "data.dir=$data" \
    "data.max_batch_utts=$batch_size" "trainer.exp_dir=$exp_dir/train" \
    "trainer.max_steps=$steps" $train_args
}

stage_probe() {
  run_cmd "$python" -m speechssl.models.vision_probe --model-dir "$exp_dir/train/final" \
    --data "$data" --train-fraction "$probe_train_fraction" --out "$exp_dir/probe"
}

if [[ -f cmd.sh ]]; then
  # shellcheck source=/dev/null
  . ./cmd.sh
fi
parse_options "$@"
[[ -n $model ]] || die "--model is required (an image preset, e.g. simclr_vision_tiny)"
[[ -n $exp_dir ]] || exp_dir=exp/$model
require_integers steps batch_size
logs=$exp_dir/logs

run_stages "$exp_dir"
show_results "$exp_dir/probe/probe.md" 2
