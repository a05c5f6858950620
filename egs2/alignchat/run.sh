#!/usr/bin/env bash
# The embedded default: a spoken-QA mini world synthesized with espeak-ng and a mini chat LLM,
# both built here, so the whole recipe runs on a laptop CPU without downloads:
#   ./run.sh
# A real LLM and an existing ESPnet corpus (see README.md), e.g. on 8 GPUs:
#   ./run.sh --llm meta-llama/Llama-3.1-8B-Instruct --ngpu 8 --gpu_inference true \
#       --corpus_dir /path/to/espnet/egs2/librispeech/asr1 --corpus_subdir dump/raw \
#       --train_set train_960 --valid_set dev --test_sets "test_clean test_other" \
#       --user_template "Continue the following text: {speech}" \
#       --pretrain_config conf/tuning/train_pretrain_llama3_whisper.yaml ...
set -euo pipefail

./alignchat.sh \
    --train_set train \
    --valid_set dev \
    --test_sets test \
    --pretrain_config conf/train_pretrain.yaml \
    --instruct_config conf/train_instruct.yaml \
    --inference_config conf/decode.yaml \
    "$@"
