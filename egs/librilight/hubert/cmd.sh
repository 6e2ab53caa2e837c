# shellcheck shell=bash disable=SC2034
# Where this recipe's jobs run. Each *_cmd is a launcher from recipes/utils taking
# [--nj N] [--nodes M] [--nproc P] LOG COMMAND... (see launch_slurm.sh --help).
# 60k hours need a cluster: Slurm by default. Set the partitions (and --account, --qos)
# of yours.
dump_cmd="launch_slurm.sh --partition cpu --cpus-per-task 2 --mem 8G --time 8:00:00 --max-parallel 200"
extract_cmd="launch_slurm.sh --partition gpu --gpus-per-node 1 --cpus-per-task 8 --mem 32G --time 12:00:00 --max-parallel 64"
kmeans_cmd="launch_slurm.sh --partition cpu --cpus-per-task 32 --mem 256G --time 24:00:00"
train_cmd="launch_slurm.sh --partition gpu --gpus-per-node 8 --cpus-per-task 64 --time 168:00:00"
