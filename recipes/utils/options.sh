# shellcheck shell=bash
# Command-line options for recipes (our own take on Kaldi's parse_options.sh).
#
#   opt nj 4 "parallel jobs for feature dumping"
#   opt train_set train "training data dir under --data-root"
#   parse_options "$@"
#
# Each option becomes a shell variable (nj, train_set) and a flag with dashes (--nj,
# --train-set; the underscore spelling works too), given as `--name value` or `--name=value`;
# later flags win. `--config FILE` reads more flags from FILE where it appears: one
# `--name value` per line; `#` at a line start or after a space starts a comment. `--help`
# lists the options with their defaults. An unknown option, a missing value or a positional argument is an error naming
# it (exit 2). Values are checked by the commands they are passed to; a recipe checks the
# few it computes with itself (require_integers).

_opt_names=()
declare -A _opt_help=() _opt_default=()
usage=${usage:-}

opt() {
  (($# >= 3)) || _opt_fail "opt needs NAME DEFAULT HELP (got: $*)"
  local _o_name=$1
  [[ $_o_name =~ ^[a-z][a-z0-9_]*$ ]] || _opt_fail "option name '$_o_name' must be lower_snake_case"
  _opt_names+=("$_o_name")
  _opt_default[$_o_name]=$2
  _opt_help[$_o_name]="${*:3}"
  printf -v "$_o_name" '%s' "$2"
}

_opt_fail() {
  printf '%s: error: %s\n' "${0##*/}" "$*" >&2
  exit 2
}

_opt_set() {
  # $1: the flag as written (--train-set), $2: its value, $3: where it came from
  local _o_name=${1#--}
  _o_name=${_o_name//-/_}
  [[ -n ${_opt_help[$_o_name]+set} ]] ||
    _opt_fail "unknown option $1$3 (see --help for the options this script takes)"
  printf -v "$_o_name" '%s' "$2"
}

_opt_read_config() {
  local file=$1 lineno=0 line flag value
  [[ -f $file ]] || _opt_fail "--config $file: no such file"
  while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    [[ $line =~ ^[[:space:]]*# ]] && continue
    read -r flag value <<<"${line%%[[:space:]]#*}"
    [[ -z $flag ]] && continue
    if [[ $flag == *=* ]]; then
      value="${flag#*=}${value:+ $value}" flag=${flag%%=*}
    elif [[ -z $value ]]; then
      _opt_fail "$file:$lineno: option $flag has no value"
    fi
    [[ $flag == --* ]] || _opt_fail "$file:$lineno: expected '--name value', got '$line'"
    if [[ $flag == --config ]]; then _opt_read_config "$value"; else _opt_set "$flag" "$value" " ($file:$lineno)"; fi
  done <"$file"
}

parse_options() {
  local flag value
  while (($#)); do
    case $1 in
      -h | --help) print_help && exit 0 ;;
      --*=*) flag=${1%%=*} value=${1#*=} && shift ;;
      --*)
        (($# >= 2)) || _opt_fail "option $1 needs a value"
        flag=$1 value=$2 && shift 2
        ;;
      *) _opt_fail "unexpected argument '$1': options are given as --name value (see --help)" ;;
    esac
    if [[ $flag == --config ]]; then _opt_read_config "$value"; else _opt_set "$flag" "$value" ""; fi
  done
}

print_help() {
  local name
  printf 'Usage: %s [--name value ...]\n' "$0"
  [[ -n $usage ]] && printf '\n%s\n' "$usage"
  printf '\nOptions (--name value or --name=value; --config FILE reads such lines from FILE):\n'
  for name in "${_opt_names[@]}"; do
    printf '  %-22s %s [%s]\n' "--${name//_/-}" "${_opt_help[$name]}" "${_opt_default[$name]}"
  done
  if declare -F print_stages >/dev/null; then printf '\n' && print_stages; fi
}

print_options() {
  # the current value of every option, one `--name=value` line each (a valid --config file)
  local _o_name
  for _o_name in "${_opt_names[@]}"; do printf -- '--%s=%s\n' "${_o_name//_/-}" "${!_o_name}"; done
}

require_integers() {
  # require_integers NAME...: each option must be a non-negative integer
  local _o_name
  for _o_name in "$@"; do
    [[ ${!_o_name} =~ ^[0-9]+$ ]] || _opt_fail "--${_o_name//_/-} must be a non-negative integer, got '${!_o_name}'"
  done
}
