#!/usr/bin/env bash
# Build the embedded spoken-QA mini world and its Kaldi data dirs (no downloads).
#
# Run from the recipe dir (egs2/alignchat, where local -> ../../local):
#   local/data.sh --nj 2
#
# Stages:
#   1. local/mini_world.py: the text side in ${world_dir}: qa_{train,dev,test}.jsonl,
#      sentences_{train,dev}.jsonl, plan_{train,dev,test}.jsonl, voices.tsv, words.txt.
#   2. local/synthesize.py: espeak-ng speech (0.05-0.3 s of silence around each utterance, a noise floor)
#      in ${world_dir}/wav/<set>, and the Kaldi dirs
#        data/train  train questions + plain sentences, the 16 training voices (tr01..tr16)
#        data/dev    dev questions + plain sentences (validation), training voices
#        data/test   test questions only, the 2 test-only voices (te01, te02)
#      Each has wav.scp, text, utt2spk, spk2utt, utt2kind and, for the questions, answer
#      ("uttid answer words"). Test questions never appear in train or dev.
# The mini chat LLM is trained by a separate call:
#   python local/train_mini_llm.py --world_dir data/local/world --out_dir exp/mini_llm
set -euo pipefail

stage=1
stop_stage=2
nj=2
seed=0
max_utts=0  # per set, for quick runs (0: the whole world)
world_dir=data/local/world
data_dir=data

usage="Usage: $0 [--stage N] [--stop_stage N] [--nj N] [--seed N] [--max_utts N] [--world_dir DIR] [--data_dir DIR]"
while [ $# -gt 0 ]; do
    case "$1" in
        --stage|--stop_stage|--nj|--seed|--max_utts|--world_dir|--data_dir)
            [ $# -ge 2 ] || { echo "$0: $1 needs a value" >&2; exit 1; }
            declare "${1#--}=$2"
            shift 2
            ;;
        -h|--help) echo "${usage}"; exit 0 ;;
        *) echo "$0: unknown option $1" >&2; echo "${usage}" >&2; exit 1 ;;
    esac
done

local_dir=$(dirname "$0")
for tool in espeak-ng sox; do
    command -v "${tool}" > /dev/null || { echo "$0: ${tool} is not installed" >&2; exit 1; }
done

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    echo "stage 1: mini world text -> ${world_dir}"
    python "${local_dir}/mini_world.py" --out_dir "${world_dir}" --seed "${seed}"
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    echo "stage 2: espeak-ng synthesis -> ${data_dir}/{train,dev,test}"
    for set in train dev test; do
        python "${local_dir}/synthesize.py" --plan "${world_dir}/plan_${set}.jsonl" \
            --voices "${world_dir}/voices.tsv" --audio_dir "${world_dir}/wav/${set}" \
            --data_dir "${data_dir}/${set}" --nj "${nj}" --max_utts "${max_utts}"
    done
fi
