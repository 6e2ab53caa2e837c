#!/usr/bin/env bash
# shellcheck disable=SC2034,SC2154  # option variables are set by opt/parse_options
# HuBERT pretraining, corpus-agnostic: offline k-means units, masked prediction, iterated.
# An egs/<corpus>/hubert/run.sh sets the corpus options and calls this script from its own
# directory (local/data.sh, conf/ and cmd.sh are looked up there).
#
# Layout of --exp-dir:
#   dump/<features>/<set>/    feature stores (MFCC, or a model layer)
#   iterN/kmeans/             k-means model of iteration N
#   iterN/labels/<set>/       unit labels of iteration N
#   iterN/report/             unit-quality report of iteration N's labels (on --report-set)
#   iterN/train/              pretraining experiment of iteration N (final/: the model)
#   summary/                  results table, training curves (PNG), pointers to final models;
#                             probe.md/probe.json: the probing table (stage 12)
#   probe/<task>_<upstream>/  speechssl-probe runs (layer caches, lr sweep, results.json)
#   export/hf/                transformers export of the last model (--hf-export / --hub-repo)
#   logs/                     one log per stage and per job; .stages/: done sentinels
. "$(dirname "${BASH_SOURCE[0]}")/utils/common.sh"
. "$recipe_utils_dir/common_stages.sh"

usage="HuBERT pretraining: data -> validate -> features -> k-means -> labels + report ->
pretrain, iterated (iteration 2 clusters a hidden layer of iteration 1), then a summary.
The defaults are the published HuBERT Base settings on LibriSpeech 960 h (K=100 on MFCC,
250k steps; K=500 on layer 6 of iteration 1, 400k steps; 32-GPU batches)."

stage_options
data_options
opt report_set "" "data dir whose labels the unit-quality report scores (empty: --valid-set, else --train-set)"
opt alignments "" "frame-level phone alignments in each data dir (e.g. ali.phones) for PNMI/purity; empty: usage statistics only"
opt exp_dir exp/hubert "experiment directory (everything this recipe writes except data)"
opt dump_dir "" "feature stores (empty: EXP_DIR/dump); big, put it on scratch space"
opt nj 4 "parallel jobs (shards) for feature dumping and label application of --train-set"
opt valid_nj 2 "the same for --valid-set"
opt dump_opts "" "extra options for every 'speechssl features dump'"
opt kmeans_opts "" "extra options for every 'speechssl kmeans fit'"
opt kmeans_seed 0 "k-means seed"
opt kmeans_nodes 1 "nodes for k-means (> 1: a multi-node torchrun job)"
opt kmeans_nproc 1 "processes per node for k-means"
opt dump_cmd launch_local.sh "launcher for feature dumping, label application and reports (see cmd.sh)"
opt extract_cmd launch_local.sh "launcher for dumping model layers (GPU jobs on a cluster)"
opt kmeans_cmd launch_local.sh "launcher for k-means"
opt train_cmd launch_local.sh "launcher for pretraining"
opt num_iterations 2 "pretraining iterations (1 or 2)"
opt iter1_features mfcc "iteration 1 clusters MFCCs, or a layer of --iter1-checkpoint"
opt mfcc_opts "--deltas 2" "options of the MFCC dump (--iter1-features mfcc; HuBERT: 13 MFCCs + deltas + delta-deltas)"
opt iter1_dump_opts "" "extra options for dumping iteration 1's features"
opt iter1_checkpoint "" "model dir whose layer iteration 1 clusters (--iter1-features model)"
opt iter1_layer 0 "layer of --iter1-checkpoint (--iter1-features model)"
opt iter1_k 100 "clusters in iteration 1"
opt iter1_percent 10 "percent of --train-set's utterances k-means is fitted on (iteration 1)"
opt iter1_model hubert_base "model (speechssl/configs/model/NAME.yaml or TRAIN_CONFIG_DIR/model/) pretrained in iteration 1"
opt iter1_steps 250000 "updates in iteration 1"
opt iter1_train_args "" "extra speechssl-train overrides for iteration 1"
opt iter2_layer 6 "layer of the iteration-1 model that iteration 2 clusters"
opt iter2_k 500 "clusters in iteration 2"
opt iter2_percent 10 "percent of --train-set's utterances k-means is fitted on (iteration 2)"
opt iter2_model hubert_base "model pretrained in iteration 2"
opt iter2_steps 400000 "updates in iteration 2"
opt iter2_train_args "" "extra speechssl-train overrides for iteration 2"
opt train_args "" "speechssl-train overrides for both iterations (before the per-iteration ones)"
opt train_config_dir conf/train "extra Hydra config dir for speechssl-train, used if it exists (same group layout as speechssl/configs/)"
opt train_nodes 1 "nodes for pretraining"
opt train_nproc 1 "processes (GPUs) per node for pretraining"
opt ref_world_size 32 "GPUs of the published setup: gradient accumulation = this / (nodes x nproc); 0: no accumulation"
opt summary_expect_higher "" "metric (e.g. pnmi) the last iteration's units must beat the first's in the summary; empty: no check"
opt probe_tasks "" "SUPERB-like probing tasks after pretraining, comma-separated (pr,sid,ks); superb: the bundled set pr,ks,qbe,sid,ic,sd; empty: no probing stage"
opt probe_upstreams "mfcc fbank iter1 iter2" "upstreams to probe: fbank, mfcc, iterN (EXP_DIR/iterN/train) or a model dir"
opt probe_data "" "task roots <task>/{train,dev,test} with the tasks' label files (see docs/probing.md)"
opt probe_local_data "" "script writing --probe-data from --data-root, run as SCRIPT --data-root DIR --out DIR (empty: --probe-data exists)"
opt probe_args "" "speechssl-probe overrides for every probing run (e.g. preset=synth)"
opt probe_cmd launch_local.sh "launcher for probing runs"
export_options

add_data_stages # 1 data, 2 validate
add_stage 3 dump_iter1 "dump iteration 1's features (MFCC or a model layer)"
add_stage 4 kmeans_iter1 "fit k-means on iteration 1's features"
add_stage 5 labels_iter1 "apply iteration 1's k-means (labels) and report unit quality"
add_stage 6 train_iter1 "pretrain iteration 1"
add_stage 7 dump_iter2 "dump a layer of the iteration-1 model" 'num_iterations >= 2'
add_stage 8 kmeans_iter2 "fit k-means on the layer features" 'num_iterations >= 2'
add_stage 9 labels_iter2 "apply iteration 2's k-means (labels) and report unit quality" 'num_iterations >= 2'
add_stage 10 train_iter2 "pretrain iteration 2" 'num_iterations >= 2'
add_stage 11 summary "results table (unit quality per iteration), training curves, final models"
add_stage 12 probe "probe the upstreams on --probe-tasks (speechssl-probe), table in summary/probe.md" 'probing'
add_stage 13 export "export the last model to transformers with a model card (push with --hub-repo)" 'do_export'

# ---------------------------------------------------------------------------- helpers

iter_features() {
  # the feature-store name of iteration $1's features
  if (($1 == 1)); then
    if [[ $iter1_features == mfcc ]]; then echo mfcc; else echo "teacher_layer${iter1_layer}"; fi
  else
    echo "iter$(($1 - 1))_layer$iter2_layer"
  fi
}

shards_of() {
  # the number of shards (jobs) a data set is dumped and labelled in
  if [[ $1 == "$train_set" ]]; then echo "$nj"; else echo "$valid_nj"; fi
}

dump_features() {
  # dump_features ITER LAUNCHER ARGS...: dump every data set with `speechssl features dump ARGS`
  local it=$1 launcher=$2 set n
  shift 2
  for set in $(data_sets); do
    n=$(shards_of "$set")
    # shellcheck disable=SC2086  # option strings are lists of words
    run_jobs "$launcher" --nj "$n" "$logs/dump_iter${it}_$set.JOB.log" \
      speechssl features dump --data "$data_root/$set" "$@" \
      --out "$dump_dir/$(iter_features "$it")/$set" --nshard "$n" --rank JOB $dump_opts
  done
}

fit_kmeans() {
  # fit_kmeans ITER K PERCENT
  # shellcheck disable=SC2086
  run_jobs "$kmeans_cmd" --nodes "$kmeans_nodes" --nproc "$kmeans_nproc" "$logs/kmeans_iter$1.log" \
    speechssl kmeans fit --features "$dump_dir/$(iter_features "$1")/$train_set" --k "$2" \
    --percent "$3" --seed "$kmeans_seed" --out "$exp_dir/iter$1/kmeans" $kmeans_opts
}

apply_kmeans() {
  # apply_kmeans ITER: labels for every data set, then the report
  local it=$1 set n ali_opts=()
  for set in $(data_sets); do
    n=$(shards_of "$set")
    run_jobs "$dump_cmd" --nj "$n" "$logs/labels_iter${it}_$set.JOB.log" \
      speechssl kmeans apply --kmeans "$exp_dir/iter$it/kmeans" \
      --features "$dump_dir/$(iter_features "$it")/$set" --out "$exp_dir/iter$it/labels/$set" \
      --nshard "$n" --rank JOB
  done
  if [[ -n $alignments ]]; then ali_opts=(--alignments "$data_root/$report_set/$alignments"); fi
  run_jobs "$dump_cmd" "$logs/report_iter$it.log" \
    speechssl kmeans report --labels "$exp_dir/iter$it/labels/$report_set" \
    --data "$data_root/$report_set" "${ali_opts[@]}" --out "$exp_dir/iter$it/report"
}

pretrain() {
  # pretrain ITER MODEL STEPS EXTRA_ARGS
  local it=$1 model=$2 steps=$3 extra=$4 args=()
  if [[ -d $train_config_dir ]]; then args+=(--config-dir "$train_config_dir"); fi
  args+=("model=$model" "data.dir=$data_root/$train_set" "data.labels=[$exp_dir/iter$it/labels/$train_set]")
  if [[ -n $valid_set ]]; then
    args+=("data.dev_dir=$data_root/$valid_set" "data.dev_labels=[$exp_dir/iter$it/labels/$valid_set]")
  fi
  args+=("trainer.exp_dir=$exp_dir/iter$it/train" "trainer.max_steps=$steps")
  if ((grad_accum > 0)); then args+=("trainer.grad_accum=$grad_accum"); fi
  # shellcheck disable=SC2086  # override strings are lists of words
  run_jobs "$train_cmd" --nodes "$train_nodes" --nproc "$train_nproc" "$logs/train_iter$it.log" \
    speechssl-train "${args[@]}" $train_args $extra
}

# ---------------------------------------------------------------------------- stages

stage_dump_iter1() {
  if [[ $iter1_features == mfcc ]]; then
    # shellcheck disable=SC2086
    dump_features 1 "$dump_cmd" --kind mfcc $mfcc_opts $iter1_dump_opts
  else
    # shellcheck disable=SC2086
    dump_features 1 "$extract_cmd" --kind model --checkpoint "$iter1_checkpoint" \
      --layer "$iter1_layer" $iter1_dump_opts
  fi
}

stage_kmeans_iter1() { fit_kmeans 1 "$iter1_k" "$iter1_percent"; }
stage_labels_iter1() { apply_kmeans 1; }
stage_train_iter1() { pretrain 1 "$iter1_model" "$iter1_steps" "$iter1_train_args"; }

stage_dump_iter2() {
  dump_features 2 "$extract_cmd" --kind model --checkpoint "$exp_dir/iter1/train/final" \
    --layer "$iter2_layer"
}

stage_kmeans_iter2() { fit_kmeans 2 "$iter2_k" "$iter2_percent"; }
stage_labels_iter2() { apply_kmeans 2; }
stage_train_iter2() { pretrain 2 "$iter2_model" "$iter2_steps" "$iter2_train_args"; }

stage_summary() {
  local it args=(--out "$exp_dir/summary")
  for ((it = 1; it <= num_iterations; it++)); do
    run_cmd speechssl train plot "$exp_dir/iter$it/train" --out "$exp_dir/summary/curves_iter$it.png"
    args+=(--units "iter$it=$exp_dir/iter$it/report")
    args+=(--train "iter$it=$exp_dir/iter$it/train")
  done
  if [[ -n $summary_expect_higher ]]; then args+=(--expect-higher "$summary_expect_higher"); fi
  run_cmd speechssl recipe summary "${args[@]}"
}

stage_probe() {
  local task up spec name runs=()
  if [[ -n $probe_local_data ]]; then
    run_cmd "$probe_local_data" --data-root "$data_root" --out "$probe_data" --tasks "$probe_tasks"
  fi
  for task in ${probe_tasks//,/ }; do
    for up in $probe_upstreams; do
      if [[ $up =~ ^iter([0-9]+)$ ]]; then
        if ((BASH_REMATCH[1] > num_iterations)); then
          log "probe: skipping upstream $up (--num-iterations $num_iterations)"
          continue
        fi
        spec=$exp_dir/$up/train
      else
        spec=$up
      fi
      name=$(basename "$up")
      # shellcheck disable=SC2086  # override strings are lists of words
      run_jobs "$probe_cmd" "$logs/probe_${task}_$name.log" \
        speechssl-probe "task=$task" "upstream=$spec" "data.dir=$probe_data/$task" \
        "trainer.exp_dir=$exp_dir/probe/${task}_$name" $probe_args
      runs+=("$name=$exp_dir/probe/${task}_$name")
    done
  done
  run_cmd speechssl probe report "${runs[@]}" --out "$exp_dir/summary" \
    --note "test-set metric (%) of the lr picked on dev; SYNTHETIC speech if the corpus is the bundled one"
}

stage_export() { export_hf_model "$exp_dir/iter$num_iterations/train/final"; }

# ---------------------------------------------------------------------------- main

# where jobs run: cmd.sh of the corpus directory sets the *_cmd launchers
if [[ -f cmd.sh ]]; then
  # shellcheck source=/dev/null
  . ./cmd.sh
fi
parse_options "$@"

require_integers num_iterations iter1_layer ref_world_size train_nodes train_nproc
((num_iterations == 1 || num_iterations == 2)) || die "--num-iterations must be 1 or 2, got $num_iterations"
[[ $iter1_features == mfcc || $iter1_features == model ]] ||
  die "--iter1-features must be mfcc or model, got '$iter1_features'"
if [[ $iter1_features == model && (-z $iter1_checkpoint || $iter1_layer -lt 1) ]]; then
  die "--iter1-features model needs --iter1-checkpoint DIR and --iter1-layer N (>= 1)"
fi
[[ -n $dump_dir ]] || dump_dir=$exp_dir/dump
[[ -n $report_set ]] || report_set=${valid_set:-$train_set}
probing=0 # 1 when --probe-tasks is given (the condition of stage 12)
if [[ $probe_tasks == superb ]]; then probe_tasks=pr,ks,qbe,sid,ic,sd; fi # the bundled set
if [[ -n $probe_tasks ]]; then probing=1; fi
if ((probing)) && [[ -z $probe_data ]]; then die "--probe-tasks needs --probe-data DIR"; fi
logs=$exp_dir/logs
set_export_wanted
grad_accum=$(grad_accum_for "$ref_world_size" "$train_nodes" "$train_nproc")

run_stages "$exp_dir"
show_results "$exp_dir/summary/results.md" 11
if [[ -n $probe_tasks ]]; then show_results "$exp_dir/summary/probe.md" 12; fi
