#!/usr/bin/env bash
# shellcheck disable=SC2034,SC2154  # option variables are set by opt/parse_options
# Label-free pretraining (wav2vec 2.0, w2v-BERT, data2vec, BEST-RQ), corpus-agnostic: data ->
# validate -> pretrain -> summary [-> probe]. recipes/wav2vec2.sh, w2v_bert.sh and data2vec.sh call it
# with --family set; the family's defaults (--model, --steps, --ref-world-size) are read from
# recipes/conf/FAMILY.conf before the command line, so any of them can be overridden; an egs/<corpus>/<method>/run.sh calls those from its own directory
# (local/data.sh, conf/ and cmd.sh are looked up there).
#
# Layout of --exp-dir:
#   train/      the pretraining experiment (final/: the model, log.jsonl, checkpoints)
#   summary/    results table, training curves (PNG); probe.md/probe.json: the probing table
#   probe/<task>_<upstream>/  speechssl-probe runs (stage 5, with --probe-tasks)
#   export/hf/  transformers export of the model (--hf-export / --hub-repo)
#   logs/       one log per stage and per job; .stages/: done sentinels
. "$(dirname "${BASH_SOURCE[0]}")/utils/common.sh"
. "$recipe_utils_dir/common_stages.sh"

usage="Label-free SSL pretraining: data -> validate -> pretrain -> summary.
--family picks the method; --model, --steps and --ref-world-size default to its base
setting on LibriSpeech 960 h, from recipes/conf/FAMILY.conf (table in recipes/README.md)."

stage_options
data_options
opt family "" "method family: a recipes/conf/FAMILY.conf (wav2vec2, w2v_bert, data2vec, best_rq, distilhubert, speaker_dino, speaker_vicreg, ssast)"
opt exp_dir "" "experiment directory (empty: exp/FAMILY)"
opt train_cmd launch_local.sh "launcher for pretraining (see cmd.sh)"
opt model "" "model (speechssl/configs/model/NAME.yaml or TRAIN_CONFIG_DIR/model/)"
opt steps "" "updates"
opt train_args "" "extra speechssl-train overrides"
opt teacher "" "distillation (distilhubert): the teacher model dir (a run's final/), passed as model.teacher"
opt train_config_dir conf/train "extra Hydra config dir for speechssl-train, used if it exists (same group layout as speechssl/configs/)"
opt train_nodes 1 "nodes for pretraining"
opt train_nproc 1 "processes (GPUs) per node for pretraining"
opt ref_world_size "" "GPUs of the published setup: gradient accumulation = this / (nodes x nproc); 0: none"
probe_options "mfcc fbank model" "model (EXP_DIR/train, shown as FAMILY), teacher (--teacher)"
export_options

add_data_stages # 1 data, 2 validate
add_stage 3 train "pretrain"
add_stage 4 summary "results table (final training metrics), training curves, final model"
add_stage 5 probe "probe the upstreams on --probe-tasks (speechssl-probe), table in summary/probe.md" 'probing'
add_stage 6 export "export the model to transformers with a model card (push with --hub-repo)" 'do_export'

stage_train() {
  local args=()
  if [[ -d $train_config_dir ]]; then args+=(--config-dir "$train_config_dir"); fi
  args+=("model=$model" "data.dir=$data_root/$train_set")
  if [[ -n $teacher ]]; then args+=("model.teacher=$teacher"); fi
  if [[ -n $valid_set ]]; then args+=("data.dev_dir=$data_root/$valid_set"); fi
  args+=("trainer.exp_dir=$exp_dir/train" "trainer.max_steps=$steps")
  if ((grad_accum > 0)); then args+=("trainer.grad_accum=$grad_accum"); fi
  # shellcheck disable=SC2086
  run_jobs "$train_cmd" --nodes "$train_nodes" --nproc "$train_nproc" "$logs/train.log" \
    speechssl-train "${args[@]}" $train_args
}

stage_summary() {
  run_cmd speechssl train plot "$exp_dir/train" --out "$exp_dir/summary/curves.png"
  run_cmd speechssl recipe summary --out "$exp_dir/summary" --train "$family=$exp_dir/train"
}

probe_upstream() {
  # probe_upstream UP (for stage_probe): model is EXP_DIR/train (named FAMILY in the table),
  # teacher the --teacher dir; anything else is given to speechssl-probe as it is
  probe_name=$(basename "$1") probe_spec=$1
  case $1 in
    model) probe_name=$family probe_spec=$exp_dir/train ;;
    teacher) probe_spec=$teacher ;;
  esac
}

stage_export() { export_hf_model "$exp_dir/train/final"; }

if [[ -f cmd.sh ]]; then
  # shellcheck source=/dev/null
  . ./cmd.sh
fi
parse_options "$@"
family_conf=${recipe_utils_dir%/utils}/conf/$family.conf
if [[ -z $family || ! -f $family_conf ]]; then
  families=()
  for conf in "${recipe_utils_dir%/utils}"/conf/*.conf; do
    conf=${conf##*/}
    families+=("${conf%.conf}")
  done
  die "--family must be one of: ${families[*]} (a recipes/conf/FAMILY.conf), got '$family'"
fi
# the family's defaults first, then the command line again, so every flag given wins
parse_options --config "$family_conf" "$@"
[[ -n $exp_dir ]] || exp_dir=exp/$family
if [[ $family == distilhubert && -z $teacher ]]; then
  die "--family distilhubert distils a teacher: give --teacher DIR (a speechssl model dir, e.g. a HuBERT run's train/final)"
fi
check_probe_options # probing: the condition of stage 5
if ((probing)) && [[ -z $teacher && " $probe_upstreams " == *" teacher "* ]]; then
  die "--probe-upstreams teacher needs --teacher DIR (the distillation teacher)"
fi
require_integers steps ref_world_size train_nodes train_nproc
logs=$exp_dir/logs
set_export_wanted
grad_accum=$(grad_accum_for "$ref_world_size" "$train_nodes" "$train_nproc")

run_stages "$exp_dir"
show_results "$exp_dir/summary/results.md" 4
if [[ -n $probe_tasks ]]; then show_results "$exp_dir/summary/probe.md" 5; fi
