# shellcheck shell=bash disable=SC2034
# Where this recipe's jobs run. Each *_cmd is a launcher from recipes/utils taking
# [--nj N] [--nodes M] [--nproc P] LOG COMMAND... (see launch_local.sh --help).
# The bundled corpus runs on this machine:
dump_cmd="launch_local.sh"
extract_cmd="launch_local.sh"
kmeans_cmd="launch_local.sh"
train_cmd="launch_local.sh"
# On a Slurm cluster, for example:
#   dump_cmd="launch_slurm.sh --partition cpu --cpus-per-task 4 --mem 16G --time 4:00:00"
#   extract_cmd="launch_slurm.sh --partition gpu --gpus-per-node 1 --time 4:00:00"
#   kmeans_cmd="launch_slurm.sh --partition cpu --cpus-per-task 16 --mem 64G --time 8:00:00"
#   train_cmd="launch_slurm.sh --partition gpu --gpus-per-node 8 --time 72:00:00"
