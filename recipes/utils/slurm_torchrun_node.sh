#!/usr/bin/env bash
# The per-node half of launch_slurm.sh's distributed jobs; srun runs it once per node.
#
#   slurm_torchrun_node.sh --nproc P --port N COMMAND [ARG...]
#
# Starts torchrun with P processes on this node, all nodes of the Slurm step meeting at a
# c10d rendezvous on the step's first node (port N), so COMMAND runs as WORLD_SIZE =
# nodes x P processes with RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set by torchrun.
set -euo pipefail
nproc=1 port=29500
while (($#)); do
  case $1 in
    --nproc) nproc=$2 && shift 2 ;;
    --port) port=$2 && shift 2 ;;
    *) break ;;
  esac
done
(($#)) || { echo "slurm_torchrun_node.sh: error: no command" >&2; exit 2; }
nodelist=${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}
nnodes=${SLURM_STEP_NUM_NODES:-${SLURM_NNODES:-}}
if [[ -z $nodelist || -z $nnodes ]]; then
  echo "slurm_torchrun_node.sh: error: not inside a Slurm step (SLURM_STEP_NODELIST/SLURM_STEP_NUM_NODES unset); launch it with launch_slurm.sh" >&2
  exit 2
fi
head_node=$(scontrol show hostnames "$nodelist" | head -n 1)
run_id="${SLURM_JOB_ID:-0}.${SLURM_STEP_ID:-0}"
echo "[node ${SLURM_NODEID:-?} $(hostname)] torchrun: $nnodes node(s) x $nproc process(es), rendezvous $head_node:$port id $run_id" >&2
exec torchrun --nnodes "$nnodes" --nproc-per-node "$nproc" --rdzv-backend c10d \
  --rdzv-endpoint "$head_node:$port" --rdzv-id "$run_id" --max-restarts 0 --no-python "$@"
