# shellcheck shell=bash disable=SC2034,SC2154  # option variables are set by opt/parse_options
# What every pretraining template shares: data options, the data and validate stages, the
# data sets a stage loops over, and gradient accumulation from a reference GPU count.
# Source after common.sh.

data_options() {
  opt data_root data "directory holding the Kaldi data dirs"
  opt train_set train "data dir (under --data-root) to pretrain on"
  opt valid_set "" "data dir for validation during pretraining (empty: none)"
  opt local_data local/data.sh "corpus data preparation script (stage 1), run as SCRIPT --data-root DIR OPTS"
  opt local_data_opts "" "extra options for the data preparation script"
  opt validate_opts "" "extra options for 'speechssl data validate' (e.g. --fast)"
}

add_data_stages() {
  add_stage 1 data "prepare the data dirs (local data preparation script)"
  add_stage 2 validate "validate the data dirs"
}

data_sets() {
  # the data dirs every per-set stage handles: the train set, then the valid set if any
  printf '%s\n' "$train_set"
  if [[ -n $valid_set ]]; then printf '%s\n' "$valid_set"; fi
}

stage_data() {
  # shellcheck disable=SC2086  # option strings are lists of words
  run_cmd "$local_data" --data-root "$data_root" $local_data_opts
}

stage_validate() {
  local set
  for set in $(data_sets); do
    # shellcheck disable=SC2086
    run_cmd speechssl data validate $validate_opts "$data_root/$set"
  done
}

grad_accum_for() {
  # grad_accum_for REF_WORLD_SIZE NODES NPROC: updates accumulated so that NODES x NPROC
  # processes see the batch of REF_WORLD_SIZE GPUs (0 when REF_WORLD_SIZE is 0)
  local ref=$1 world=$(($2 * $3))
  if ((ref == 0)); then
    echo 0
    return
  fi
  ((ref % world == 0)) ||
    die "the reference setup's $ref GPUs are not a multiple of the $world training processes (--ref-world-size, --train-nodes x --train-nproc)"
  echo $((ref / world))
}

show_results() {
  # show_results FILE STAGE: print the summary's results table after a real run whose range
  # includes the summary stage (the table is the recipe's answer, not only a log entry)
  if [[ $dry_run == false ]] && ((stage <= $2 && $2 <= stop_stage)) && [[ -f $1 ]]; then
    printf '\n'
    cat "$1"
  fi
}

# ------------------------------------------------------------- probing (optional stage)

probe_options() {
  # probe_options DEFAULT_UPSTREAMS UPSTREAM_NAMES: the probing stage's options; the recipe
  # defines probe_upstream (below) for the names of its own models (UPSTREAM_NAMES, for --help)
  opt probe_tasks "" "SUPERB-like probing tasks after pretraining, comma-separated (pr,sid,ks); superb: the bundled set pr,ks,qbe,sid,ic,sd; empty: no probing stage"
  opt probe_upstreams "$1" "upstreams to probe: fbank, mfcc, $2 or a model dir"
  opt probe_data "" "task roots <task>/{train,dev,test} with the tasks' label files (see docs/probing.md)"
  opt probe_local_data "" "script writing --probe-data from --data-root, run as SCRIPT --data-root DIR --out DIR --tasks LIST (empty: --probe-data exists)"
  opt probe_args "" "speechssl-probe overrides for every probing run (e.g. preset=synth)"
  opt probe_cmd launch_local.sh "launcher for probing runs"
}

check_probe_options() {
  # probing=1 when --probe-tasks is given (the condition of the probing stage), else 0
  probing=0
  if [[ $probe_tasks == superb ]]; then probe_tasks=pr,ks,qbe,sid,ic,sd; fi # the bundled set
  if [[ -n $probe_tasks ]]; then probing=1; fi
  if ((probing)) && [[ -z $probe_data ]]; then die "--probe-tasks needs --probe-data DIR"; fi
}

stage_probe() {
  # every task x upstream as a speechssl-probe run under EXP_DIR/probe/<task>_<name>, then
  # the table in EXP_DIR/summary/probe.md; the recipe's probe_upstream UP sets probe_name and
  # probe_spec (the upstream= value) of an entry of --probe-upstreams, status 1 skips it
  local task up runs=()
  if [[ -n $probe_local_data ]]; then
    run_cmd "$probe_local_data" --data-root "$data_root" --out "$probe_data" --tasks "$probe_tasks"
  fi
  for task in ${probe_tasks//,/ }; do
    for up in $probe_upstreams; do
      probe_upstream "$up" || continue
      # shellcheck disable=SC2086  # override strings are lists of words
      run_jobs "$probe_cmd" "$logs/probe_${task}_$probe_name.log" \
        speechssl-probe "task=$task" "upstream=$probe_spec" "data.dir=$probe_data/$task" \
        "trainer.exp_dir=$exp_dir/probe/${task}_$probe_name" $probe_args
      runs+=("$probe_name=$exp_dir/probe/${task}_$probe_name")
    done
  done
  run_cmd speechssl probe report "${runs[@]}" --out "$exp_dir/summary" \
    --note "test-set metric (%) of the lr picked on dev; SYNTHETIC speech if the corpus is the bundled one"
}

# ------------------------------------------------------------- export (final, optional stage)

export_options() {
  opt hf_export false "final stage: export the last model as a transformers dir with a model card (EXP_DIR/export/hf)"
  opt hub_repo "" "hub repo id the final stage pushes the export to (implies --hf-export true; token from HF_TOKEN or the huggingface_hub login)"
  opt hf_export_opts "" "extra options for 'speechssl export hf' (e.g. '--license apache-2.0 --private')"
}

set_export_wanted() {
  # do_export=1 if the export stage runs (--hf-export true or a --hub-repo), else 0
  [[ $hf_export == true || $hf_export == false ]] || die "--hf-export must be true or false, got '$hf_export'"
  # shellcheck disable=SC2034  # read by the export stage's condition
  if [[ $hf_export == true || -n $hub_repo ]]; then do_export=1; else do_export=0; fi
}

export_hf_model() {
  # export_hf_model MODEL_DIR: write EXP_DIR/export/hf (card with the summary's tables), push
  # it with --hub-repo; --overwrite because a stage that is not done is redone whole
  local args=("$1" "$exp_dir/export/hf" --overwrite --summary "$exp_dir/summary")
  if [[ -n $hub_repo ]]; then args+=(--push "$hub_repo"); fi
  # shellcheck disable=SC2086  # option strings are lists of words
  run_cmd speechssl export hf "${args[@]}" $hf_export_opts
}
