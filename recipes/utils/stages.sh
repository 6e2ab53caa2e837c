# shellcheck shell=bash
# Numbered, resumable recipe stages. Source after log.sh and options.sh (common.sh does).
#
# A recipe declares the standard options, registers its stages and runs them:
#
#   stage_options                       # --stage --stop-stage --dry-run --force
#   add_stage 3 dump_mfcc "dump MFCC features"
#   add_stage 7 dump_layer "dump layer features of iteration 1" 'num_iterations >= 2'
#   stage_dump_mfcc() { run_cmd speechssl features dump ...; }
#   parse_options "$@"
#   run_stages "$exp_dir"
#
# Every command a stage runs goes through `run_cmd CMD...` or, for commands that go through a
# launcher from cmd.sh, `run_jobs "$launcher" [--nj N] LOG CMD...`. A stage function does
# nothing else with side effects, because it is also called in "plan" mode, where these only
# print, to get the exact command list (shown by --dry-run, recorded in the stage's sentinel).
#
# run_stages runs each registered stage whose number is in [--stage, --stop-stage] and whose
# optional condition holds, in order:
#   - its output (every command and what it printed) goes to STATE/logs/stage-NN.NAME.log;
#     the console gets a start line and an end line with the elapsed time;
#   - on success it writes STATE/.stages/stage-NN.NAME.done holding the command list;
#   - a stage whose sentinel exists is skipped, but only if its command list is unchanged:
#     a done stage whose commands changed (different options) is an error, not a silent
#     reuse of stale output; --force true redoes the stages in range regardless;
#   - starting a stage turns the sentinels of all later stages into .stale markers (their
#     inputs change);
#   - outputs of an earlier completed run are never resumed from: a stage that runs while its
#     .done (--force) or .stale marker exists first moves the paths its optional
#     `outputs_NAME` function prints to PATH.old (replacing an older PATH.old), so commands
#     that skip complete work (feature shards, label shards, checkpoints) start fresh. A stage
#     that failed or was interrupted has neither marker, so a rerun resumes its partial work;
#   - a failing stage stops the recipe (exit 1) naming the stage and its log, with the
#     log's tail; rerunning skips the finished stages and redoes the failed one;
#   - SIGINT/SIGTERM/SIGHUP stop the running stage's whole process group before exiting.
# One run at a time per STATE directory (a lock, where flock(1) exists).

_stage_nums=()
declare -A _stage_name=() _stage_desc=() _stage_when=()
_plan_mode=0

stage_options() {
  opt --int stage 1 "first stage to run"
  opt --int stop_stage 1000 "last stage to run"
  opt dry_run false "print the commands of each stage in range without running anything"
  opt force false "redo the stages in range even if they are marked done"
}

add_stage() {
  (($# == 3 || $# == 4)) || die "add_stage needs NUM NAME DESCRIPTION [CONDITION], got: $*"
  local num=$1 name=$2
  [[ $num =~ ^[0-9]+$ ]] || die "add_stage: stage number must be a non-negative integer, got '$num'"
  [[ $name =~ ^[a-z][a-z0-9_]*$ ]] || die "add_stage: stage name '$name' must be lower_snake_case"
  [[ -z ${_stage_name[$num]+set} ]] || die "add_stage: stage $num registered twice"
  _stage_nums+=("$num")
  _stage_name[$num]=$name
  _stage_desc[$num]=$3
  _stage_when[$num]=${4:-}
}

_sorted_stage_nums() {
  printf '%s\n' "${_stage_nums[@]}" | sort -n
}

print_stages() {
  local num
  printf 'Stages (run those in [--stage, --stop-stage]; finished ones are skipped on rerun):\n'
  for num in $(_sorted_stage_nums); do
    printf '  %3d  %-16s %s' "$num" "${_stage_name[$num]}" "${_stage_desc[$num]}"
    [[ -n ${_stage_when[$num]} ]] && printf ' (only if %s)' "${_stage_when[$num]}"
    printf '\n'
  done
}

run_cmd() {
  # Run a command (log it first); in plan mode only print it. Output goes wherever the
  # stage's output goes (its log file).
  if ((_plan_mode)); then
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
  # run_jobs "LAUNCHER [its options]" [--nj N] [--nodes M] [--nproc P] LOG COMMAND...
  # Runs a command through a launcher from cmd.sh (launch_local.sh, launch_slurm.sh ...).
  # Where jobs run is not part of what a stage computes, so the sentinel's command list
  # (plan mode 2) leaves the launcher out: moving a half-done recipe to Slurm is fine.
  local launcher=$1
  shift
  if ((_plan_mode == 2)); then
    quote_args "<launcher>" "$@"
    return 0
  fi
  # word splitting of the launcher string is intended: "launch_slurm.sh --mem 8G"
  # shellcheck disable=SC2086
  run_cmd $launcher "$@"
}

_stage_file() {
  # _stage_file NUM EXT: the stage's file stem with an extension
  printf 'stage-%02d.%s.%s' "$1" "${_stage_name[$1]}" "$2"
}

_stage_plan() {
  # _stage_plan NUM MODE: the stage's command list, computed without running anything;
  # MODE 1 shows every command in full, MODE 2 leaves launchers out (the sentinel's record)
  local fn="stage_${_stage_name[$1]}"
  declare -F "$fn" >/dev/null || die "stage $1 (${_stage_name[$1]}) has no function $fn"
  (
    _plan_mode=$2
    "$fn"
  )
}

_stage_enabled() {
  local when=${_stage_when[$1]}
  [[ -z $when ]] && return 0
  # the condition is an arithmetic expression over option variables, e.g. 'num_iterations >= 2'
  ((when))
}

_invalidate_from() {
  # turn the sentinels of every stage after NUM into .stale markers; drop NUM's own
  local from=$1 dir=$2 file num
  for file in "$dir"/stage-*.done; do
    [[ -e $file ]] || continue
    num=${file##*/stage-}
    num=$((10#${num%%.*}))
    if ((num > from)); then
      mv -f "$file" "${file%.done}.stale"
    elif ((num == from)); then
      rm -f "$file"
    fi
  done
}

_set_aside_outputs() {
  # _set_aside_outputs NAME: move each existing path outputs_NAME prints to PATH.old
  local name=$1 path
  declare -F "outputs_$name" >/dev/null || return 0
  while IFS= read -r path; do
    [[ -n $path && -e $path ]] || continue
    rm -rf "$path.old"
    mv "$path" "$path.old"
    log "stage outputs from an earlier completed run set aside: $path -> $path.old"
  done < <("outputs_$name")
}

_stage_pid=""

_on_signal() {
  local sig=$1
  trap - INT TERM HUP
  if [[ -n $_stage_pid ]]; then
    log "caught SIG$sig: stopping the running stage (process group $_stage_pid)"
    kill -TERM -- "-$_stage_pid" 2>/dev/null || true
    # wait for every process of the stage, so no writer outlives the recipe
    local waited=0
    while kill -0 -- "-$_stage_pid" 2>/dev/null; do
      if ((waited >= 300)); then
        kill -KILL -- "-$_stage_pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
      waited=$((waited + 1))
    done
  fi
  log "interrupted; rerun the same command to resume (finished stages are skipped)"
  exit 130
}

# stage, stop_stage, dry_run and force are the options stage_options declares
# shellcheck disable=SC2154
run_stages() {
  # run_stages STATE_DIR: sentinels go to STATE_DIR/.stages, logs to STATE_DIR/logs
  local state=$1 num name desc plan done_file stale_file log_file t0 rc tail_lines=25
  local sentinels="$state/.stages" logs="$state/logs"
  ((${#_stage_nums[@]})) || die "no stages registered"

  if [[ $dry_run == true ]]; then
    for num in $(_sorted_stage_nums); do
      ((num < stage || num > stop_stage)) && continue
      name=${_stage_name[$num]}
      printf '# stage %d (%s): %s' "$num" "$name" "${_stage_desc[$num]}"
      if ! _stage_enabled "$num"; then
        printf ' [not used: %s is false]\n' "${_stage_when[$num]}"
        continue
      fi
      done_file="$sentinels/$(_stage_file "$num" "done")"
      if [[ -f $done_file && $force != true ]]; then
        printf ' [done: would be skipped]'
      fi
      printf '\n'
      _stage_plan "$num" 1
    done
    return 0
  fi

  mkdir -p "$sentinels" "$logs"
  if command -v flock >/dev/null; then
    exec {_lock_fd}>"$sentinels/lock"
    flock -n "$_lock_fd" || die "another run is already using $state (lock $sentinels/lock held)"
  fi
  print_options >"$logs/options.txt"
  trap '_on_signal INT' INT
  trap '_on_signal TERM' TERM
  trap '_on_signal HUP' HUP

  for num in $(_sorted_stage_nums); do
    ((num < stage || num > stop_stage)) && continue
    name=${_stage_name[$num]}
    desc=${_stage_desc[$num]}
    if ! _stage_enabled "$num"; then
      log "stage $num ($name): not used (${_stage_when[$num]} is false)"
      continue
    fi
    plan=$(_stage_plan "$num" 2)
    done_file="$sentinels/$(_stage_file "$num" "done")"
    log_file="$logs/$(_stage_file "$num" log)"
    if [[ -f $done_file && $force != true ]]; then
      if [[ $(tail -n +2 "$done_file") == "$plan" ]]; then
        log "stage $num ($name): done earlier, skipping"
        continue
      fi
      die "stage $num ($name) is marked done but its commands differ from this run's" \
        "(options changed?). Old commands: $done_file. To redo it and every later stage:" \
        "rerun with --stage $num --force true"
    fi
    stale_file="$sentinels/$(_stage_file "$num" "stale")"
    if [[ -f $done_file || -f $stale_file ]]; then
      _set_aside_outputs "$name"
      rm -f "$stale_file"
    fi
    _invalidate_from "$num" "$sentinels"
    log "stage $num ($name): $desc; log: $log_file"
    {
      printf '=== stage %d (%s) started %s\n' "$num" "$name" "$(date '+%Y-%m-%d %H:%M:%S')"
    } >>"$log_file"
    t0=$SECONDS
    # own process group (set -m) so a signal can stop the stage and everything it started
    set -m
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
      log "stage $num ($name) failed (exit $rc) after $(elapsed $((SECONDS - t0))); last lines of $log_file:"
      tail -n "$tail_lines" "$log_file" | sed 's/^/    /' >&2
      die "stage $num ($name) failed; see $log_file. Fix the cause and rerun the same command: finished stages are skipped and this one is redone."
    fi
    {
      printf '# stage %d (%s) finished %s in %s\n' "$num" "$name" "$(date '+%Y-%m-%d %H:%M:%S')" \
        "$(elapsed $((SECONDS - t0)))"
      printf '%s\n' "$plan"
    } >"$done_file.tmp"
    mv -f "$done_file.tmp" "$done_file"
    printf '=== stage %d (%s) done in %s\n' "$num" "$name" "$(elapsed $((SECONDS - t0)))" >>"$log_file"
    log "stage $num ($name): done in $(elapsed $((SECONDS - t0)))"
  done
  trap - INT TERM HUP
}
