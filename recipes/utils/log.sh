# shellcheck shell=bash
# Logging helpers for recipes and launchers. Source it; it defines functions only.
#
#   log MESSAGE...     "2024-05-01 12:00:00 (run.sh:42) MESSAGE" on stderr
#   warn MESSAGE...    the same, prefixed with "WARNING:"
#   die MESSAGE...     the same, prefixed with "ERROR:", then exit 1
#   quote_args ARG...  print the arguments as one copy-pasteable shell command line
#   elapsed SECONDS    "1h02m03s" / "2m03s" / "3s"

_log_at() {
  # $1: how many calls up the line to name is; the rest is the message. Lines inside these
  # utils are named by the script that runs them, lines of the script by script:line.
  local depth=$1 info file
  shift
  if info=$(caller "$depth") && [[ ${info##* } != */recipes/utils/* ]]; then
    file=${info##* }
    info="${file##*/}:${info%% *}"
  else
    info=${0##*/}
  fi
  printf '%s (%s) %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$info" "$*" >&2
}

log() {
  _log_at 1 "$@"
}

warn() {
  _log_at 1 "WARNING: $*"
}

die() {
  _log_at 1 "ERROR: $*"
  exit 1
}

quote_args() {
  # Words made only of safe characters print bare; anything else is single-quoted, so the
  # line can be pasted into a shell and runs the same argument vector.
  local out="" arg
  for arg in "$@"; do
    if [[ -n $arg && $arg =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '%s\n' "${out% }"
}

elapsed() {
  local s=$1
  if ((s >= 3600)); then
    printf '%dh%02dm%02ds' $((s / 3600)) $((s % 3600 / 60)) $((s % 60))
  elif ((s >= 60)); then
    printf '%dm%02ds' $((s / 60)) $((s % 60))
  else
    printf '%ds' "$s"
  fi
}
