# shellcheck shell=bash disable=SC2034
# Where this recipe's jobs run. Each *_cmd is a launcher from recipes/utils taking
# [--nj N] [--nodes M] [--nproc P] LOG COMMAND... (see launch_local.sh --help).
# Default: one machine (torchrun over its GPUs for training).
dump_cmd="launch_local.sh --max-parallel 16"
extract_cmd="launch_local.sh --max-parallel 8"
kmeans_cmd="launch_local.sh"
train_cmd="launch_local.sh"
# On a Slurm cluster, for example:
#   dump_cmd="launch_slurm.sh --partition cpu --cpus-per-task 2 --mem 8G --time 4:00:00"
#   extract_cmd="launch_slurm.sh --partition gpu --gpus-per-node 1 --cpus-per-task 8 --time 8:00:00"
#   kmeans_cmd="launch_slurm.sh --partition cpu --cpus-per-task 32 --mem 128G --time 12:00:00"
#   train_cmd="launch_slurm.sh --partition gpu --gpus-per-node 8 --cpus-per-task 64 --time 120:00:00"
# and in run.sh's options: --train-nodes 4 --train-nproc 8 (32 GPUs, no accumulation).
