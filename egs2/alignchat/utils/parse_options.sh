#!/usr/bin/env bash
# Parse "--name value" options into shell variables, as Kaldi's parse_options.sh does: an option
# sets the variable of the same name (dashes become underscores) and must already have a default,
# so a typo is an error rather than a silently ignored option. "--name=value" works too.
# Source it after setting defaults: `. utils/parse_options.sh`.

while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h)
            echo "${help_message:-Usage: $0 [options]}"
            exit 0
            ;;
        --*=*)
            __name=${1%%=*}
            __value=${1#*=}
            shift
            ;;
        --*)
            [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
            __name=$1
            __value=$2
            shift 2
            ;;
        *)
            break
            ;;
    esac
    __name=${__name#--}
    __name=${__name//-/_}
    if [ -z "${!__name+set}" ]; then
        echo "$0: invalid option --${__name}" >&2
        exit 1
    fi
    case "${!__name}" in
        true|false)
            if [ "${__value}" != true ] && [ "${__value}" != false ]; then
                echo "$0: option --${__name} takes true or false, not '${__value}'" >&2
                exit 1
            fi
            ;;
    esac
    printf -v "${__name}" '%s' "${__value}"
done
unset __name __value
