#!/usr/bin/env bash
# Run a command as one or more jobs on this machine (our take on Kaldi's run.pl).
#
#   launch_local.sh [options] LOG COMMAND [ARG...]
#
#   --nj N            run N jobs; the word JOB in LOG and in every argument becomes the job
#                     index 0..N-1 (matching `--nshard N --rank JOB`). Default 1 (JOB = 0).
#   JOB=A:B           Kaldi style: run jobs A..B (inclusive) instead of --nj.
#   --max-parallel N  at most N jobs at a time (default: all of them).
#   --nproc P         P > 1: run ONE distributed job of P processes through
#                     `torchrun --standalone --nproc-per-node P`, which gives each process
#                     RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT. Default 1.
#   --nodes M         only 1 here (multi-node jobs need launch_slurm.sh).
#   --dry-run BOOL    print each job's command line and log, run nothing.
#
# Each job's output goes to its log, framed by a header (command, start time, host) and a
# footer (end time, elapsed seconds, exit status). Exit status 0 iff every job succeeded;
# otherwise the failed jobs are listed with their logs and the first one's tail is shown.
# SIGINT/SIGTERM stop every running job.
set -euo pipefail
utils_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$utils_dir/log.sh"
. "$utils_dir/jobs.sh"

launcher_option() {
  consumed=0
}

launcher_check() {
  ((nodes == 1)) || launcher_fail "--nodes $nodes: this launcher runs on one machine; use launch_slurm.sh for multi-node jobs"
  if ((nproc > 1)) && [[ $dry_run == false ]] && ! command -v torchrun >/dev/null; then
    launcher_fail "--nproc $nproc needs torchrun on PATH (it comes with torch)"
  fi
}

job_command() {
  if ((nproc > 1)); then
    job_cmd=(torchrun --standalone --nnodes 1 --nproc-per-node "$nproc" --no-python)
  fi
  replace_job "$1" "${cmd[@]}"
}

jobs_main "$@"
