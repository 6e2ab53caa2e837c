# shellcheck shell=bash disable=SC2034
# Where this recipe's jobs run. Each *_cmd is a launcher from recipes/utils taking
# [--nj N] [--nodes M] [--nproc P] LOG COMMAND... (see launch_local.sh --help).
# The bundled corpus runs on this machine:
train_cmd="launch_local.sh"
# On a Slurm cluster, for example:
#   train_cmd="launch_slurm.sh --partition gpu --gpus-per-node 8 --time 72:00:00"
