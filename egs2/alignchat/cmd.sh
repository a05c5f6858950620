# shellcheck shell=bash
# How jobs run: "local" (this machine, parallel jobs) or "slurm" (a job array per step).
# train_cmd: CPU jobs; cuda_cmd: GPU jobs (takes --gpu N); decode_cmd: decoding jobs.
# For Slurm, put site options in SLURM_OPTIONS, e.g. export SLURM_OPTIONS="--partition=gpu".
cmd_backend=local

case "${cmd_backend}" in
    local)
        export train_cmd="utils/run_local.sh"
        export cuda_cmd="utils/run_local.sh"
        export decode_cmd="utils/run_local.sh"
        ;;
    slurm)
        export train_cmd="utils/run_slurm.sh"
        export cuda_cmd="utils/run_slurm.sh"
        export decode_cmd="utils/run_slurm.sh"
        ;;
    *)
        echo "cmd.sh: unknown cmd_backend ${cmd_backend}" >&2
        return 1
        ;;
esac
