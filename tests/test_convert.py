"""Model conversion: tiny random models written by the test in GGUF and in CTranslate2's format,
converted, and compared with the originals tensor by tensor; the entry point's skip and errors.

Nothing is downloaded: the tokenizers are trained here on a few sentences, the weights are random.
"""

import json
import logging
import struct
from pathlib import Path
from typing import Dict, List, Tuple

import gguf
import numpy as np
import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from espnet_alignchat.bin import convert_model as entry_point
from espnet_alignchat.convert import (
    convert_ct2_whisper,
    convert_gguf_llm,
    read_ct2_model,
)
from espnet_alignchat.llm import load_embeddings

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


# -- GGUF --------------------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def tiny_gguf(
    tmp_path_factory,
) -> Tuple[Path, Path, LlamaForCausalLM, PreTrainedTokenizerFast]:
    """(gguf file, its conversion, the original model, the original tokenizer)."""
    root = tmp_path_factory.mktemp("gguf")
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
    gguf_file = root / "tiny.gguf"
    write_llama_gguf(gguf_file, model, tokenizer)
    out_dir = convert_gguf_llm(gguf_file, root / "hf")
    return gguf_file, out_dir, model, original


def test_gguf_weights_are_the_original(tiny_gguf):
    _, out_dir, model, original = tiny_gguf
    names = set(json.loads((out_dir / "conversion.json").read_text())["files"])
    assert {"config.json", "model.safetensors", "generation_config.json"} <= names
    assert "quantization_config" not in json.loads(
        (out_dir / "config.json").read_text()
    )
    with safe_open(str(out_dir / "model.safetensors"), framework="pt") as stored:
        assert (
            "lm_head.weight" not in stored.keys()
        )  # tied: the embedding is stored once
    converted = AutoModelForCausalLM.from_pretrained(out_dir)
    assert converted.lm_head.weight is converted.get_input_embeddings().weight
    expected, got = model.state_dict(), converted.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    embeddings = load_embeddings(str(out_dir))
    assert torch.equal(embeddings, model.get_input_embeddings().weight)
    generation = json.loads((out_dir / "generation_config.json").read_text())
    im_end = original.convert_tokens_to_ids("<|im_end|>")
    assert generation["eos_token_id"] == im_end == generation["pad_token_id"]


def test_gguf_tokenizer_and_chat_template_survive(tiny_gguf):
    _, out_dir, _, original = tiny_gguf
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.eos_token_id == original.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.chat_template == CHATML
    for text in SENTENCES + ["  héllo wörld 42!\n\tnew words 🙂"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == original(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert rendered == original.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert tokenizer(rendered)["input_ids"] == original(rendered)["input_ids"]


def test_convert_model_skips_a_complete_conversion(tiny_gguf, caplog):
    gguf_file, out_dir, _, _ = tiny_gguf
    before = (out_dir / "model.safetensors").stat().st_mtime_ns
    caplog.set_level(logging.INFO)
    args = ["--format", "gguf", "--src", str(gguf_file), "--out_dir", str(out_dir)]
    entry_point.main(args)
    assert "skipped" in caplog.text
    assert (out_dir / "model.safetensors").stat().st_mtime_ns == before
    assert not list(out_dir.parent.glob(".hf.partial-*"))


def run_failing(args: List[str], capsys) -> str:
    """The entry point's stderr, asserting it exits with status 1 and one line."""
    with pytest.raises(SystemExit) as exit_info:
        entry_point.main(args)
    assert exit_info.value.code == 1
    message = capsys.readouterr().err
    assert message.startswith("convert_model: error: ")
    assert len(message.strip().splitlines()) == 1
    return message


def test_convert_model_error_on_a_non_gguf_file(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_text("this is not a model\n")
    message = run_failing(
        ["--format", "gguf", "--src", str(fake), "--out_dir", str(tmp_path / "out")],
        capsys,
    )
    assert str(fake) in message and "not a GGUF file" in message
    assert not (tmp_path / "out").exists()


def test_convert_model_error_on_an_unsupported_architecture(tmp_path, capsys):
    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "not-an-llm")
    writer.add_tensor("a.weight", np.zeros((2, 2), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    args = ["--format", "gguf", "--src", str(path), "--out_dir", str(tmp_path / "out")]
    message = run_failing(args, capsys)
    assert str(path) in message and "not-an-llm" in message


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


@pytest.fixture(scope="module")
def tiny_whisper(
    tmp_path_factory,
) -> Tuple[Path, Path, WhisperForConditionalGeneration]:
    """(CTranslate2 dir, its conversion, the original model)."""
    root = tmp_path_factory.mktemp("whisper")
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
        max_source_positions=32,
        max_target_positions=40,
        decoder_start_token_id=sot,
        bos_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
    )
    model = WhisperForConditionalGeneration(config).eval()
    randomize(model)
    ct2_dir = root / "ct2"
    ct2_dir.mkdir()
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
    out_dir = convert_ct2_whisper(ct2_dir, root / "hf")
    return ct2_dir, out_dir, model


def test_read_ct2_model_resolves_aliases_and_dtypes(tiny_whisper):
    ct2_dir, _, _ = tiny_whisper
    stored = read_ct2_model(ct2_dir / "model.bin")
    assert (stored.spec, stored.revision) == ("WhisperSpec", 3)
    assert stored.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    variables = stored.variables
    assert (
        variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    )
    assert variables["encoder/conv1/weight"].dtype == np.float16
    assert variables["encoder/num_heads"].dtype == np.int16
    widened = read_ct2_model(ct2_dir / "model.bin", float32=True).variables
    assert widened["encoder/conv1/weight"].dtype == np.float32


def test_read_ct2_model_dequantizes_on_request(tmp_path):
    weight = np.array([[1, -2, 3], [4, 5, -6]], np.int8)
    scale = np.array([2.0, 4.0], np.float32)
    path = tmp_path / "model.bin"
    write_ct2_model_bin(path, {"w/weight": weight, "w/weight_scale": scale}, {}, "X")
    assert read_ct2_model(path).variables["w/weight"].dtype == np.int8
    variables = read_ct2_model(path, float32=True).variables
    np.testing.assert_array_equal(variables["w/weight"], weight / scale[:, None])
    assert "w/weight_scale" not in variables


def test_ct2_whisper_weights_and_greedy_decoding_are_the_original(tiny_whisper):
    _, out_dir, model = tiny_whisper
    converted = WhisperForConditionalGeneration.from_pretrained(out_dir).eval()
    expected, got = model.state_dict(), converted.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    # The same decoding options for both: the weights are what is compared here.
    model.generation_config = GenerationConfig.from_pretrained(out_dir)
    torch.manual_seed(1)
    features = torch.randn(2, 16, 64)  # (batch, mel bins, 2 × max_source_positions)
    decoder_ids = torch.tensor([[model.config.decoder_start_token_id, 5, 9]] * 2)
    with torch.no_grad():
        logits = [
            m(input_features=features, decoder_input_ids=decoder_ids).logits
            for m in (model, converted)
        ]
        assert torch.equal(*logits)
        greedy = [
            m.generate(features, do_sample=False, num_beams=1, max_new_tokens=8)
            for m in (model, converted)
        ]
    assert torch.equal(*greedy) and greedy[0].shape[1] > 1


def test_ct2_whisper_generation_config_tokenizer_and_processor(tiny_whisper):
    ct2_dir, out_dir, model = tiny_whisper
    options = json.loads((ct2_dir / "config.json").read_text())
    original = Tokenizer.from_file(str(ct2_dir / "tokenizer.json"))
    ids = {token: original.token_to_id(token) for token in WHISPER_SPECIALS}
    generation = json.loads((out_dir / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == ids["<|startoftranscript|>"]
    assert (
        generation["eos_token_id"] == generation["pad_token_id"] == ids["<|endoftext|>"]
    )
    assert generation["no_timestamps_token_id"] == ids["<|notimestamps|>"]
    assert generation["suppress_tokens"] == options["suppress_ids"]
    assert generation["begin_suppress_tokens"] == options["suppress_ids_begin"]
    assert generation["is_multilingual"] is False and "lang_to_id" not in generation
    processor = AutoProcessor.from_pretrained(out_dir)
    assert processor.feature_extractor.feature_size == model.config.num_mel_bins
    for text in SENTENCES:
        encoded = processor.tokenizer(text)["input_ids"]
        assert (
            encoded == original.encode(text).ids
        )  # with the <|startoftranscript|> prompt
        assert processor.tokenizer.decode(encoded, skip_special_tokens=True) == text


def test_convert_model_error_on_a_truncated_model_bin(tiny_whisper, tmp_path, capsys):
    ct2_dir, _, _ = tiny_whisper
    broken = tmp_path / "ct2"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (broken / name).write_bytes((ct2_dir / name).read_bytes())
    data = (ct2_dir / "model.bin").read_bytes()
    (broken / "model.bin").write_bytes(data[: len(data) // 2])
    out_dir = tmp_path / "out"
    args = ["--format", "ctranslate2-whisper", "--src", str(broken)]
    message = run_failing(args + ["--out_dir", str(out_dir)], capsys)
    assert str(broken / "model.bin") in message and "truncated" in message
    assert not out_dir.exists() and not list(tmp_path.glob(".out.partial-*"))
