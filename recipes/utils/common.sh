# shellcheck shell=bash
# Everything a recipe script needs: strict shell options, logging, declared options and
# stages. Source it first: `. "$(dirname "${BASH_SOURCE[0]}")/utils/common.sh"`.
# It also puts recipes/utils on PATH, so cmd.sh can name launchers (launch_local.sh,
# launch_slurm.sh) without a path.
set -euo pipefail
# command substitutions inherit set -e, so a failing $(...) inside a stage stops it
shopt -s inherit_errexit
# sort, join and friends behave the same everywhere (Kaldi files are C-sorted)
export LC_ALL=C

recipe_utils_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$recipe_utils_dir/log.sh"
. "$recipe_utils_dir/options.sh"
. "$recipe_utils_dir/stages.sh"
case ":$PATH:" in
  *":$recipe_utils_dir:"*) ;;
  *) export PATH="$recipe_utils_dir:$PATH" ;;
esac
