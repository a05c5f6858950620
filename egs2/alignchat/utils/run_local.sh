#!/usr/bin/env bash
# Run a command, or an array of jobs, on this machine; the interface of ESPnet's run.pl:
#   utils/run_local.sh [--gpu N] [--mem SIZE] [--num_threads N] [--max_jobs_run N] \
#       [JOB=1:N] <log file> <command> [args...]
# "JOB" in the log path and in the arguments becomes the job number. Jobs run in parallel (at
# most --max_jobs_run at once, default all); each log starts with the command and ends with its
# exit status. The exit status is non-zero if any job failed, and the failed logs are named.
# Each job gets --num_threads CPU threads (OMP_NUM_THREADS, which torch follows); by default the
# cores are shared out among the jobs that run at once, since jobs that each take every core
# slow each other down several times over. --gpu and --mem are accepted for compatibility
# with cluster backends.
set -euo pipefail

max_jobs_run=0
num_threads=""
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu|--mem) shift 2 ;;
        --num_threads) num_threads=$2; shift 2 ;;
        --max_jobs_run) max_jobs_run=$2; shift 2 ;;
        *) break ;;
    esac
done
first=1
last=1
job_var=""
if [[ "${1:-}" =~ ^([A-Za-z_]+)=([0-9]+):([0-9]+)$ ]]; then
    job_var=${BASH_REMATCH[1]}
    first=${BASH_REMATCH[2]}
    last=${BASH_REMATCH[3]}
    shift
fi
[ $# -ge 2 ] || { echo "usage: $0 [options] [JOB=1:N] <log> <command...>" >&2; exit 1; }
log=$1
shift
command=$(printf '%q ' "$@")

if [ -z "${num_threads}" ]; then
    concurrent=$((last - first + 1))
    if [ "${max_jobs_run}" -gt 0 ] && [ "${max_jobs_run}" -lt "${concurrent}" ]; then
        concurrent=${max_jobs_run}
    fi
    num_threads=$(($(nproc) / concurrent))
    [ "${num_threads}" -ge 1 ] || num_threads=1
fi
export OMP_NUM_THREADS=${num_threads} MKL_NUM_THREADS=${num_threads}

run_job() {
    local id=$1 job_log=${log} job_command=${command}
    if [ -n "${job_var}" ]; then
        job_log=${log//${job_var}/${id}}
        job_command=${command//${job_var}/${id}}
    fi
    mkdir -p "$(dirname "${job_log}")"
    {
        echo "# ${job_command}"
        echo "# Started at $(date)"
    } > "${job_log}"
    local status=0 start=${SECONDS}
    bash -c "${job_command}" >> "${job_log}" 2>&1 || status=$?
    {
        echo "# Accounting: time=$((SECONDS - start))"
        echo "# Ended (code ${status}) at $(date)"
    } >> "${job_log}"
    return "${status}"
}

pids=()
ids=()
for ((id = first; id <= last; id++)); do
    if [ "${max_jobs_run}" -gt 0 ]; then
        while [ "$(jobs -rp | wc -l)" -ge "${max_jobs_run}" ]; do
            wait -n || true
        done
    fi
    run_job "${id}" &
    pids+=($!)
    ids+=("${id}")
done
failed=()
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed+=("${ids[$i]}")
done
if [ ${#failed[@]} -gt 0 ]; then
    for id in "${failed[@]}"; do
        job_log=${log}
        [ -n "${job_var}" ] && job_log=${log//${job_var}/${id}}
        echo "$0: job ${id} failed, see ${job_log}" >&2
    done
    exit 1
fi
