# shellcheck shell=bash
# Declared command-line options for recipes (our own take on Kaldi's parse_options.sh).
#
# A script declares every option with its default and a one-line help, then parses:
#
#   opt --int nj 4 "parallel jobs for feature dumping"
#   opt train_set train "training data dir under --data-root"
#   opt dry_run false "print the commands each stage would run, run nothing"
#   parse_options "$@"
#
# Each option becomes a shell variable (nj, train_set, dry_run) and a flag with dashes
# (--nj, --train-set, --dry-run; the underscore spelling is accepted too), given as
# `--name value` or `--name=value`. Later flags win over earlier ones. `--config FILE` reads
# more flags from FILE where it appears: one per line, `--name value` or `--name=value`
# (value = rest of the line), `#` starting a comment at a line start or after a space.
# `--help` prints every option with its default and exits 0. An unknown option, a missing
# value, a positional argument or a value of the wrong type is an error naming the flag
# (exit 2), never silently ignored.
#
# Types: booleans (default true/false) must be true or false; --int takes an integer;
# --num a decimal number; --choice "a|b|c" one of the listed words; anything else is text.

_opt_names=()
declare -A _opt_help=() _opt_type=() _opt_default=()
usage=${usage:-}

opt() {
  # locals carry a prefix: printf -v would assign a local that shadows an option name
  local _o_type=text
  case ${1:-} in
    --int | --num) _o_type=${1#--} && shift ;;
    --choice) _o_type="choice:$2" && shift 2 ;;
  esac
  (($# >= 3)) || _opt_fail "opt needs NAME DEFAULT HELP (got: $*)"
  local _o_name=$1 _o_default=$2
  shift 2
  [[ $_o_name =~ ^[a-z][a-z0-9_]*$ ]] || _opt_fail "option name '$_o_name' must be lower_snake_case"
  [[ -z ${_opt_help[$_o_name]+set} ]] || _opt_fail "option '$_o_name' declared twice"
  [[ $_o_default == true || $_o_default == false ]] && _o_type=bool
  _opt_names+=("$_o_name")
  _opt_help[$_o_name]="$*"
  _opt_type[$_o_name]=$_o_type
  _opt_default[$_o_name]=$_o_default
  # the default must itself be valid, so a typo in a recipe fails at once
  _opt_check "$_o_name" "$_o_default" "default of --${_o_name//_/-}"
  printf -v "$_o_name" '%s' "$_o_default"
}

_opt_fail() {
  # a usage error: exit status 2, like every speechssl command
  printf '%s: error: %s\n' "${0##*/}" "$*" >&2
  exit 2
}

_opt_check() {
  local name=$1 value=$2 what=$3 type=${_opt_type[$1]}
  case $type in
    bool) [[ $value == true || $value == false ]] || _opt_fail "$what must be true or false, got '$value'" ;;
    int) [[ $value =~ ^-?[0-9]+$ ]] || _opt_fail "$what must be an integer, got '$value'" ;;
    num) [[ $value =~ ^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]] ||
      _opt_fail "$what must be a number, got '$value'" ;;
    choice:*)
      local choices=${type#choice:}
      [[ "|$choices|" == *"|$value|"* ]] || _opt_fail "$what must be one of ${choices//|/, }, got '$value'"
      ;;
  esac
  return 0
}

_opt_set() {
  # $1: the flag as written (--train-set), $2: its value, $3: where it came from
  local _o_flag=$1 _o_value=$2 _o_where=$3 _o_name
  _o_name=${_o_flag#--}
  _o_name=${_o_name//-/_}
  if [[ -z ${_opt_help[$_o_name]+set} ]]; then
    _opt_fail "unknown option $_o_flag$_o_where (see --help for the options this script takes)"
  fi
  _opt_check "$_o_name" "$_o_value" "$_o_flag$_o_where"
  printf -v "$_o_name" '%s' "$_o_value"
}

_opt_read_config() {
  local file=$1 lineno=0 line flag value
  [[ -f $file ]] || _opt_fail "--config $file: no such file"
  while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    [[ $line =~ ^[[:space:]]*# ]] && continue
    line=${line%%[[:space:]]#*}
    line=${line#"${line%%[![:space:]]*}"}
    line=${line%"${line##*[![:space:]]}"}
    [[ -z $line ]] && continue
    [[ $line == --* ]] || _opt_fail "$file:$lineno: expected '--name value', got '$line'"
    if [[ $line == *=* && ${line%%=*} != *[[:space:]]* ]]; then
      flag=${line%%=*}
      value=${line#*=}
    elif [[ $line == *[[:space:]]* ]]; then
      flag=${line%%[[:space:]]*}
      value=${line#"$flag"}
      value=${value#"${value%%[![:space:]]*}"}
    else
      _opt_fail "$file:$lineno: option $line has no value"
    fi
    [[ $flag == --config ]] && { _opt_read_config "$value"; continue; }
    _opt_set "$flag" "$value" " ($file:$lineno)"
  done <"$file"
}

parse_options() {
  local flag value
  while (($#)); do
    case $1 in
      -h | --help)
        print_help
        exit 0
        ;;
      --*=*)
        flag=${1%%=*}
        value=${1#*=}
        shift
        ;;
      --*)
        flag=$1
        (($# >= 2)) || _opt_fail "option $flag needs a value"
        value=$2
        shift 2
        ;;
      *) _opt_fail "unexpected argument '$1': options are given as --name value (see --help)" ;;
    esac
    if [[ $flag == --config ]]; then
      _opt_read_config "$value"
    else
      _opt_set "$flag" "$value" ""
    fi
  done
}

print_help() {
  local name flag width=0
  printf 'Usage: %s [--name value ...]\n' "$0"
  [[ -n $usage ]] && printf '\n%s\n' "$usage"
  printf '\nOptions (--name value or --name=value; --config FILE reads such lines from FILE):\n'
  for name in "${_opt_names[@]}"; do
    flag=--${name//_/-}
    ((${#flag} > width)) && width=${#flag}
  done
  for name in "${_opt_names[@]}"; do
    printf '  %-*s  %s [%s]\n' "$width" "--${name//_/-}" "${_opt_help[$name]}" "${_opt_default[$name]}"
  done
  # a script with stages lists them too (stages.sh defines print_stages)
  if declare -F print_stages >/dev/null; then
    printf '\n'
    print_stages
  fi
}

print_options() {
  # the current value of every option, one `--name=value` line each (a valid --config file)
  local _o_name
  for _o_name in "${_opt_names[@]}"; do
    printf -- '--%s=%s\n' "${_o_name//_/-}" "${!_o_name}"
  done
}
