#!/usr/bin/env bash
# Run a command as Slurm job steps through `srun` (same interface as launch_local.sh).
#
#   launch_slurm.sh [options] LOG COMMAND [ARG...]
#
# Several jobs (sharded dumping, label application):
#   --nj N            N jobs, one single-task `srun` step each; the word JOB in LOG and in
#                     every argument becomes the job index 0..N-1. Default 1.
#   JOB=A:B           Kaldi style: jobs A..B (inclusive) instead of --nj.
#   --max-parallel N  at most N steps in flight (default: all of them).
# One distributed job (training, multi-node k-means):
#   --nodes M         nodes (default 1)
#   --nproc P         processes per node, usually the GPUs per node (default 1).
#                     With M > 1 or P > 1, srun starts one task per node and each runs
#                     slurm_torchrun_node.sh: torchrun with P processes and a c10d
#                     rendezvous at the step's first node, so every process gets RANK,
#                     LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT.
#   --port N          rendezvous port on the first node (default 29500)
# Resources, passed to srun as given (leave out what your cluster does not need):
#   --partition P  --account A  --qos Q  --time T  --mem M  --cpus-per-task C
#   --gpus-per-node G  --constraint C  --job-name NAME (JOB is replaced; default: LOG's name)
#   --srun-args "..."  any other srun options, word-split
#   --dry-run BOOL    print each srun command line and its log, submit nothing.
#
# Works from a login node (each srun makes its own allocation) or inside an allocation from
# salloc/sbatch (each srun is a step of it). Each job's output goes to its log, framed by a
# header and a footer with the exit status, as with launch_local.sh. Exit status 0 iff every
# job succeeded; SIGINT/SIGTERM cancel the running steps.
set -euo pipefail
utils_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$utils_dir/log.sh"
. "$utils_dir/jobs.sh"

port=29500 job_name="" srun_args=""
resources=()

launcher_option() {
  consumed=0
  case $1 in
    --port | --job-name | --srun-args)
      (($# >= 2)) || launcher_fail "$1 needs a value"
      local key=${1#--}
      printf -v "${key//-/_}" '%s' "$2"
      consumed=2
      ;;
    --partition | --account | --qos | --time | --mem | --cpus-per-task | --gpus-per-node | --constraint)
      (($# >= 2)) || launcher_fail "$1 needs a value"
      resources+=("$1=$2")
      consumed=2
      ;;
  esac
}

launcher_check() {
  [[ $port =~ ^[0-9]+$ ]] || launcher_fail "--port must be a number, got '$port'"
  [[ -n $job_name ]] || job_name=$(basename "${log_pattern%.log}")
  if [[ $dry_run == false ]] && ! command -v srun >/dev/null; then
    launcher_fail "srun not found: launch_slurm.sh needs a Slurm client (cmd.sh can name launch_local.sh to run here)"
  fi
}

job_command() {
  # shellcheck disable=SC2206  # --srun-args is a list of words on purpose
  local extra=($srun_args)
  job_cmd=(srun --kill-on-bad-exit=1 "--job-name=${job_name//JOB/$1}" "${resources[@]}" "${extra[@]}")
  if [[ $distributed == true ]]; then
    job_cmd+=("--nodes=$nodes" --ntasks-per-node=1
      "$utils_dir/slurm_torchrun_node.sh" --nproc "$nproc" --port "$port")
  else
    job_cmd+=(--nodes=1 --ntasks=1)
  fi
  replace_job "$1" "${cmd[@]}"
}

jobs_main "$@"
