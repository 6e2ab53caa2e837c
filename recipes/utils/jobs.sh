# shellcheck shell=bash
# The job runner shared by the launchers (launch_local.sh, launch_slurm.sh). Source it after
# log.sh, define the launcher's hooks, then call `jobs_main "$@"`:
#
#   launcher_option ARGS...  consume one launcher-specific option from ARGS: set
#                            `consumed` to how many words it took (0: not ours)
#   launcher_check           validate the parsed settings (after the common checks)
#   job_command J            set the array `job_cmd` to job J's full command line
#                            (`cmd` holds the user's command, JOB not yet replaced)
#
# Common options, parsed here: --nj N, JOB=A:B, --max-parallel N, --nproc P, --nodes M,
# --dry-run BOOL (see launch_local.sh --help). Every job writes its own log, framed by a
# header (the command, the start time and host) and a footer (end time, elapsed seconds,
# exit status). The launcher exits 0 iff every job succeeded; otherwise it lists the failed
# jobs with their logs and shows the first one's tail. SIGINT/SIGTERM/SIGHUP stop every
# running job before the launcher exits.

launcher_usage() {
  # the launcher script's header comment is its help
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

launcher_fail() {
  echo "${0##*/}: error: $*" >&2
  exit 2
}

replace_job() {
  # replace_job J ARG...: the arguments with every JOB replaced by J, into `job_cmd` (appended)
  local j=$1 arg
  shift
  for arg in "$@"; do
    job_cmd+=("${arg//JOB/$j}")
  done
}

_jobs_parse() {
  nj=1 first=0 last="" max_parallel=0 nproc=1 nodes=1 dry_run=false
  local key
  while (($#)); do
    consumed=0
    case $1 in
      -h | --help) launcher_usage ;;
      --nj | --max-parallel | --nproc | --nodes | --dry-run)
        (($# >= 2)) || launcher_fail "$1 needs a value"
        key=${1#--}
        printf -v "${key//-/_}" '%s' "$2"
        consumed=2
        ;;
      JOB=*:*)
        key=${1#JOB=}
        first=${key%%:*}
        last=${key#*:}
        consumed=1
        ;;
      --*)
        launcher_option "$@"
        ((consumed > 0)) || launcher_fail "unknown option $1 (see --help)"
        ;;
      *) break ;;
    esac
    shift "$consumed"
  done
  (($# >= 2)) || launcher_fail "need LOG and COMMAND (see --help)"
  for key in nj max_parallel nproc nodes first; do
    [[ ${!key} =~ ^[0-9]+$ ]] || launcher_fail "--${key//_/-} must be a non-negative integer, got '${!key}'"
  done
  [[ $dry_run == true || $dry_run == false ]] || launcher_fail "--dry-run must be true or false, got '$dry_run'"
  if [[ -z $last ]]; then
    ((nj >= 1)) || launcher_fail "--nj must be at least 1"
    last=$((first + nj - 1))
  fi
  if ! [[ $last =~ ^[0-9]+$ ]] || ((last < first)); then
    launcher_fail "bad job range JOB=$first:$last"
  fi
  ((nodes >= 1 && nproc >= 1)) || launcher_fail "--nodes and --nproc must be at least 1"
  njobs=$((last - first + 1))
  distributed=false
  if ((nodes > 1 || nproc > 1)); then distributed=true; fi
  if [[ $distributed == true ]] && ((njobs > 1)); then
    launcher_fail "one distributed job (--nodes $nodes --nproc $nproc) cannot be combined with $njobs jobs"
  fi
  if ((max_parallel == 0 || max_parallel > njobs)); then max_parallel=$njobs; fi
  log_pattern=$1
  shift
  if ((njobs > 1)) && [[ $log_pattern != *JOB* ]]; then
    launcher_fail "$njobs jobs need JOB in the log name, got $log_pattern"
  fi
  cmd=("$@")
}

_jobs_pids=()
_jobs_status_dir=""

_jobs_cleanup() {
  [[ -z $_jobs_status_dir ]] || rm -rf "$_jobs_status_dir"
}

_jobs_stop() {
  trap - INT TERM HUP
  local pid
  for pid in "${_jobs_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
  _jobs_cleanup
  exit 130
}

_jobs_run_one() {
  # one job: header, the command, footer; its exit status goes to the status dir. The
  # command runs in the background and is waited for, so a TERM to this subshell is
  # forwarded to it instead of waiting for it to finish.
  local j=$1 log=$2 t0=$SECONDS rc=0 child
  job_cmd=()
  job_command "$j"
  mkdir -p "$(dirname "$log")"
  {
    printf '# %s\n' "$(quote_args "${job_cmd[@]}")"
    printf '# started at %s on %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$(hostname)"
  } >"$log"
  trap 'kill -TERM $child 2>/dev/null || true' TERM INT HUP
  "${job_cmd[@]}" </dev/null >>"$log" 2>&1 &
  child=$!
  wait "$child" || rc=$?
  # a trapped signal ends the first wait early; the second one gets the real status
  if kill -0 "$child" 2>/dev/null; then
    rc=0
    wait "$child" || rc=$?
  fi
  printf '# finished at %s after %ds with exit status %d\n' "$(date '+%Y-%m-%d %H:%M:%S')" \
    $((SECONDS - t0)) "$rc" >>"$log"
  echo "$rc" >"$_jobs_status_dir/$j"
}

jobs_main() {
  local j rc f failed=()
  _jobs_parse "$@"
  launcher_check
  if [[ $dry_run == true ]]; then
    for ((j = first; j <= last; j++)); do
      job_cmd=()
      job_command "$j"
      printf '%s > %s\n' "$(quote_args "${job_cmd[@]}")" "$(quote_args "${log_pattern//JOB/$j}")"
    done
    return 0
  fi

  _jobs_status_dir=$(mktemp -d "${TMPDIR:-/tmp}/${0##*/}.XXXXXX")
  trap _jobs_cleanup EXIT
  trap _jobs_stop INT TERM HUP
  for ((j = first; j <= last; j++)); do
    while (($(jobs -rp | wc -l) >= max_parallel)); do
      wait -n || true
    done
    _jobs_run_one "$j" "${log_pattern//JOB/$j}" &
    _jobs_pids+=($!)
  done
  wait || true

  for ((j = first; j <= last; j++)); do
    rc=$(cat "$_jobs_status_dir/$j" 2>/dev/null || echo "unknown")
    [[ $rc == 0 ]] || failed+=("$j:$rc")
  done
  if ((${#failed[@]})); then
    log "${#failed[@]} of $njobs job(s) failed: $(quote_args "${cmd[@]}")"
    for f in "${failed[@]}"; do
      echo "  job ${f%%:*}: exit status ${f#*:}, log ${log_pattern//JOB/${f%%:*}}" >&2
    done
    f=${failed[0]%%:*}
    echo "last lines of ${log_pattern//JOB/$f}:" >&2
    tail -n 20 "${log_pattern//JOB/$f}" 2>/dev/null | sed 's/^/    /' >&2 || true
    return 1
  fi
  if ((njobs > 1)); then
    log "all $njobs jobs done: $(quote_args "${cmd[@]}")"
  fi
}
