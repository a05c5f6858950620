"""Model conversion: tiny random models written by the test in GGUF and in CTranslate2's format,
converted, and compared with the originals tensor by tensor; the entry point's skip and errors.

Nothing is downloaded: the tokenizers are trained here on a few sentences, the weights are random.
"""

import json
import logging
from pathlib import Path
from typing import List, Tuple

import gguf
import numpy as np
import pytest
import torch
from fake_assets import (
    CHATML,
    SENTENCES,
    WHISPER_SPECIALS,
    tiny_ct2_whisper,
    tiny_llama_gguf,
    write_ct2_model_bin,
)
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    WhisperForConditionalGeneration,
)

from espnet_alignchat.bin import convert_model as entry_point
from espnet_alignchat.convert import (
    convert_ct2_whisper,
    convert_gguf_llm,
    read_ct2_model,
)
from espnet_alignchat.llm import load_embeddings

# -- GGUF --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(
    tmp_path_factory,
) -> Tuple[Path, Path, LlamaForCausalLM, PreTrainedTokenizerFast]:
    """(gguf file, its conversion, the original model, the original tokenizer)."""
    gguf_file = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    model, original = tiny_llama_gguf(gguf_file)
    out_dir = convert_gguf_llm(gguf_file, gguf_file.parent / "hf")
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


@pytest.fixture(scope="module")
def tiny_whisper(
    tmp_path_factory,
) -> Tuple[Path, Path, WhisperForConditionalGeneration]:
    """(CTranslate2 dir, its conversion, the original model)."""
    root = tmp_path_factory.mktemp("whisper")
    model = tiny_ct2_whisper(root / "ct2")
    out_dir = convert_ct2_whisper(root / "ct2", root / "hf")
    return root / "ct2", out_dir, model


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
