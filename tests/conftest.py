"""Test fixtures: a tiny random LLM (see espnet_alignchat.testing) and synthetic speech."""

import argparse
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile
import transformers

from espnet_alignchat.testing import build_word_tokenizer, save_random_llm

WORDS = (
    "what is one two three four five six seven eight nine ten plus minus times "
    "yes no hello world the answer say again please thank you big small"
).split()
SAMPLE_RATE = 16000


def build_tokenizer():
    return build_word_tokenizer(WORDS)


def save_tiny_llm(path: Path, num_layers: int = 2, seed: int = 0, max_shard_size=None):
    return save_random_llm(
        path, WORDS, num_layers=num_layers, seed=seed, max_shard_size=max_shard_size
    )


def refuse_llm_loading(monkeypatch) -> None:
    """Make any attempt to build the LLM from its weights fail the test."""

    def refuse(*args, **kwargs):
        pytest.fail("the full LLM was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    return save_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-llama")


@pytest.fixture(scope="session")
def other_llm(tmp_path_factory) -> Path:
    """Same architecture and vocabulary as `tiny_llm`, other weights: another LLM."""
    return save_tiny_llm(tmp_path_factory.mktemp("llm") / "other-llama", seed=1)


def tone(words: List[str], rng: np.random.Generator) -> np.ndarray:
    """A stand-in utterance: one short chirp per word, pitch set by the word."""
    pieces = []
    for word in words:
        duration = 0.12 + 0.02 * (len(word) % 3)
        t = np.arange(int(duration * SAMPLE_RATE)) / SAMPLE_RATE
        frequency = 200 + 40 * (WORDS.index(word) if word in WORDS else 0)
        pieces.append(0.3 * np.sin(2 * np.pi * frequency * t))
        pieces.append(np.zeros(int(0.03 * SAMPLE_RATE)))
    noise = 0.01 * rng.standard_normal(sum(len(p) for p in pieces))
    return (np.concatenate(pieces) + noise).astype(np.float32)


def write_data_dir(path: Path, utterances: Dict[str, Dict[str, str]], seed: int = 0):
    """A Kaldi data dir (wav.scp, text, utt2spk, response if given) with synthetic audio."""
    rng = np.random.default_rng(seed)
    (path / "wav").mkdir(parents=True, exist_ok=True)
    files = {name: open(path / name, "w") for name in ("wav.scp", "text", "utt2spk")}
    response = None
    for utt_id in sorted(utterances):
        entry = utterances[utt_id]
        wav = path / "wav" / f"{utt_id}.wav"
        soundfile.write(wav, tone(entry["text"].split(), rng), SAMPLE_RATE)
        files["wav.scp"].write(f"{utt_id} {wav}\n")
        files["text"].write(f"{utt_id} {entry['text']}\n")
        files["utt2spk"].write(f"{utt_id} {utt_id.split('_')[0]}\n")
        if "response" in entry:
            response = response or open(path / "response", "w")
            response.write(f"{utt_id} {entry['response']}\n")
    for f in [*files.values(), response]:
        if f is not None:
            f.close()
    return path


def tiny_model_args(llm: Path, **model_conf) -> argparse.Namespace:
    """Arguments of `AlignChatTask.build_model` for a tiny speech tokenizer."""
    from espnet_alignchat.task import AlignChatTask

    args = AlignChatTask.get_parser().parse_args(["--llm", str(llm)])
    args.frontend_conf = {"n_fft": 256, "hop_length": 160, "n_mels": 20}
    args.encoder = "conformer"
    args.encoder_conf = dict(
        output_size=32,
        attention_heads=2,
        linear_units=64,
        num_blocks=1,
        input_layer="conv2d",
        cnn_module_kernel=7,
    )
    args.decoder_conf = dict(
        attention_dim=32,
        attention_heads=2,
        linear_units=64,
        num_blocks=1,
        dropout_rate=0.0,
    )
    args.model_conf.update(model_conf)
    return args
