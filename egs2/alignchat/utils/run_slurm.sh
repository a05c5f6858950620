#!/usr/bin/env bash
# Run a command, or an array of jobs, through Slurm; same interface as utils/run_local.sh:
#   utils/run_slurm.sh [--gpu N] [--mem SIZE] [--num_threads N] [--max_jobs_run N] \
#       [JOB=1:N] <log file> <command> [args...]
# Submits one `sbatch --wait` job array (JOB = the array index) and returns when it is done,
# non-zero if any task failed. Site settings (partition, account, time limit) come from the
# environment variable SLURM_OPTIONS, e.g. export SLURM_OPTIONS="--partition=gpu --time=2-0".
set -euo pipefail

options=()
max_jobs_run=""
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) [ "$2" -gt 0 ] && options+=("--gres=gpu:$2"); shift 2 ;;
        --mem) options+=("--mem=$2"); shift 2 ;;
        --num_threads) options+=("--cpus-per-task=$2"); shift 2 ;;
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
array="${first}-${last}${max_jobs_run:+%${max_jobs_run}}"
if [ -n "${job_var}" ]; then
    log=${log//${job_var}/\$\{SLURM_ARRAY_TASK_ID\}}
    command=${command//${job_var}/\$\{SLURM_ARRAY_TASK_ID\}}
fi
mkdir -p "$(dirname "${log//\$\{SLURM_ARRAY_TASK_ID\}/x}")"
script=$(mktemp "${TMPDIR:-/tmp}/alignchat_slurm.XXXXXX")
trap 'rm -f "${script}"' EXIT
cat > "${script}" <<SCRIPT
#!/usr/bin/env bash
cd "$(pwd)"
job_log="${log}"
echo "# ${command}" > "\${job_log}"
echo "# Started at \$(date) on \$(hostname)" >> "\${job_log}"
status=0
${command} >> "\${job_log}" 2>&1 || status=\$?
echo "# Ended (code \${status}) at \$(date)" >> "\${job_log}"
exit \${status}
SCRIPT
# shellcheck disable=SC2086
sbatch --wait --parsable --array="${array}" --output=/dev/null ${SLURM_OPTIONS:-} \
    "${options[@]}" "${script}" > /dev/null || {
    echo "$0: a task of the job array failed, see ${log}" >&2
    exit 1
}
