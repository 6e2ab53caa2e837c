# shellcheck shell=bash
# Numbered recipe stages with .done sentinels. Source after log.sh and options.sh (common.sh
# does).
#
#   stage_options                               # --stage --stop-stage --dry-run
#   add_stage 3 dump_mfcc "dump MFCC features"  # [CONDITION], e.g. 'num_iterations >= 2'
#   stage_dump_mfcc() { run_cmd speechssl features dump ...; }
#   parse_options "$@"
#   run_stages "$exp_dir"
#
# run_stages runs each stage in [--stage, --stop-stage] whose condition holds, in order.
# A stage runs its commands with `run_cmd CMD...`, or `run_jobs "$launcher" [--nj N] LOG
# CMD...` for jobs through a launcher of cmd.sh; they and their output go to
# STATE/logs/stage-NN.NAME.log. On success STATE/.stages/stage-NN.NAME.done records the
# recipe's options, and a rerun with the same options skips the stage. With other options
# the stage runs again: the speechssl commands are idempotent (they keep complete work and
# refuse changed settings unless given --overwrite), so the shell needs no record of what a
# stage wrote. The stage range, --dry-run and the launchers (*_cmd) are not part of the
# record. A failing stage stops the recipe with its log's tail; rerunning resumes there.
# SIGINT/SIGTERM/SIGHUP stop the running stage's whole process group. --dry-run prints the
# commands of each stage in range and runs nothing. One run at a time per STATE (flock).

_stage_nums=()
declare -A _stage_name=() _stage_desc=() _stage_when=()

stage_options() {
  opt stage 1 "first stage to run"
  opt stop_stage 1000 "last stage to run"
  opt dry_run false "print the commands of each stage in range without running anything"
}

add_stage() {
  _stage_nums+=("$1")
  _stage_name[$1]=$2
  _stage_desc[$1]=$3
  _stage_when[$1]=${4:-}
}

print_stages() {
  local num
  printf 'Stages (run those in [--stage, --stop-stage]; finished ones are skipped on rerun):\n'
  for num in "${_stage_nums[@]}"; do
    printf '  %3d  %-16s %s' "$num" "${_stage_name[$num]}" "${_stage_desc[$num]}"
    [[ -n ${_stage_when[$num]} ]] && printf ' (only if %s)' "${_stage_when[$num]}"
    printf '\n'
  done
}

run_cmd() {
  # run a command, logging it first; with --dry-run true only print it
  # shellcheck disable=SC2154  # dry_run is declared by stage_options
  if [[ $dry_run == true ]]; then
    quote_args "$@"
    return 0
  fi
  printf '+ %s\n' "$(quote_args "$@")"
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  if ((rc != 0)); then
    printf 'command failed (exit %d after %s): %s\n' "$rc" "$(elapsed $((SECONDS - t0)))" "$(quote_args "$@")"
    return "$rc"
  fi
  printf '  (%s)\n' "$(elapsed $((SECONDS - t0)))"
}

run_jobs() {
  # run_jobs "LAUNCHER [its options]" ARGS...: the launcher string is split into words
  local launcher=$1
  shift
  # shellcheck disable=SC2086
  run_cmd $launcher "$@"
}

_stage_record() {
  # what a .done sentinel holds: the options, less the stage range and where jobs run
  print_options | grep -Ev '^--(stage|stop-stage|dry-run|[a-z0-9-]+-cmd)=' || true
}

_stage_pid=""

_on_signal() {
  trap - INT TERM HUP
  if [[ -n $_stage_pid ]]; then
    log "caught SIG$1: stopping the running stage (process group $_stage_pid)"
    kill -TERM -- "-$_stage_pid" 2>/dev/null || true
    local waited=0 # wait for every process of the stage, so no writer outlives the recipe
    while kill -0 -- "-$_stage_pid" 2>/dev/null; do
      ((waited++ < 300)) || { kill -KILL -- "-$_stage_pid" 2>/dev/null || true; break; }
      sleep 0.1
    done
  fi
  log "interrupted; rerun the same command to resume (finished stages are skipped)"
  exit 130
}

# shellcheck disable=SC2154  # stage, stop_stage are declared by stage_options
run_stages() {
  # run_stages STATE_DIR: sentinels go to STATE_DIR/.stages, logs to STATE_DIR/logs
  local state=$1 num name done_file log_file record t0 rc
  local sentinels="$state/.stages" logs="$state/logs"
  if [[ $dry_run == false ]]; then
    mkdir -p "$sentinels" "$logs"
    exec {_lock_fd}>"$sentinels/lock"
    if command -v flock >/dev/null; then
      flock -n "$_lock_fd" || die "another run is already using $state (lock $sentinels/lock held)"
    fi
    print_options >"$logs/options.txt"
    trap '_on_signal INT' INT
    trap '_on_signal TERM' TERM
    trap '_on_signal HUP' HUP
  fi
  record=$(_stage_record)
  for num in "${_stage_nums[@]}"; do
    ((num < stage || num > stop_stage)) && continue
    name=${_stage_name[$num]}
    done_file="$sentinels/$(printf 'stage-%02d.%s' "$num" "$name").done"
    log_file="$logs/$(printf 'stage-%02d.%s' "$num" "$name").log"
    if [[ -n ${_stage_when[$num]} ]] && ! ((_stage_when[$num])); then
      [[ $dry_run == true ]] && printf '# stage %d (%s): %s [not used: %s is false]\n' \
        "$num" "$name" "${_stage_desc[$num]}" "${_stage_when[$num]}"
      [[ $dry_run == true ]] || log "stage $num ($name): not used (${_stage_when[$num]} is false)"
      continue
    fi
    local done_earlier=false
    [[ -f $done_file && $(tail -n +2 "$done_file") == "$record" ]] && done_earlier=true
    if [[ $dry_run == true ]]; then
      printf '# stage %d (%s): %s%s\n' "$num" "$name" "${_stage_desc[$num]}" \
        "$([[ $done_earlier == true ]] && echo ' [done: would be skipped]')"
      ("stage_$name")
      continue
    fi
    if [[ $done_earlier == true ]]; then
      log "stage $num ($name): done earlier, skipping"
      continue
    fi
    [[ -f $done_file ]] && log "stage $num ($name): options changed since it was done; running it again"
    rm -f "$done_file"
    log "stage $num ($name): ${_stage_desc[$num]}; log: $log_file"
    printf '=== stage %d (%s) started %s\n' "$num" "$name" "$(date '+%Y-%m-%d %H:%M:%S')" >>"$log_file"
    t0=$SECONDS
    set -m # own process group, so a signal can stop the stage and everything it started
    (
      trap - INT TERM HUP
      set -euo pipefail
      "stage_$name"
    ) </dev/null >>"$log_file" 2>&1 &
    _stage_pid=$!
    set +m
    rc=0
    wait "$_stage_pid" || rc=$?
    _stage_pid=""
    if ((rc != 0)); then
      printf '=== stage %d (%s) FAILED (exit %d) after %s\n' "$num" "$name" "$rc" \
        "$(elapsed $((SECONDS - t0)))" >>"$log_file"
      log "stage $num ($name) failed (exit $rc); last lines of $log_file:"
      tail -n 25 "$log_file" | sed 's/^/    /' >&2
      die "stage $num ($name) failed; see $log_file. Fix the cause and rerun the same command: finished stages are skipped and this one is redone."
    fi
    printf '# stage %d (%s) finished %s in %s\n%s\n' "$num" "$name" "$(date '+%Y-%m-%d %H:%M:%S')" \
      "$(elapsed $((SECONDS - t0)))" "$record" >"$done_file.tmp"
    mv -f "$done_file.tmp" "$done_file"
    printf '=== stage %d (%s) done in %s\n' "$num" "$name" "$(elapsed $((SECONDS - t0)))" >>"$log_file"
    log "stage $num ($name): done in $(elapsed $((SECONDS - t0)))"
  done
  trap - INT TERM HUP
}
