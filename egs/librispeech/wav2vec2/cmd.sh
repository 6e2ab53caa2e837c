# shellcheck shell=bash disable=SC2034
# Where this recipe's jobs run. Each *_cmd is a launcher from recipes/utils taking
# [--nj N] [--nodes M] [--nproc P] LOG COMMAND... (see launch_local.sh --help).
# Default: one machine (torchrun over its GPUs).
train_cmd="launch_local.sh"
# On a Slurm cluster, for example:
#   train_cmd="launch_slurm.sh --partition gpu --gpus-per-node 8 --cpus-per-task 64 --time 120:00:00"
# and in run.sh's options: --train-nodes 8 --train-nproc 8 (64 GPUs, no accumulation).
