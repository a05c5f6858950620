"""Test fixtures: a tiny random LLM (see espnet_alignchat.testing), synthetic speech and tiny
models trained through ESPnet's own `main`."""

import argparse
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np
import pytest
import soundfile
import torch
import transformers
import yaml

from espnet_alignchat.testing import (
    TINY_TRAINING,
    build_word_tokenizer,
    link_recipe,
    save_random_llm,
)

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


# A batch of three utterances for models built by `build`.
TRANSCRIPTS = ["what is two plus three", "hello world", "say yes please"]
ANSWERS = ["five", "hello", "yes"]


def pad(sequences, value):
    return torch.nn.utils.rnn.pad_sequence(
        sequences, batch_first=True, padding_value=value
    )


@pytest.fixture(scope="module")
def batch():
    tokenizer = build_tokenizer()
    rng = np.random.default_rng(0)
    waves = [torch.from_numpy(tone(text.split(), rng)) for text in TRANSCRIPTS]

    def ids(texts):
        seqs = [
            torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"])
            for t in texts
        ]
        return pad(seqs, -1), torch.tensor([len(s) for s in seqs])

    text, text_lengths = ids(TRANSCRIPTS)
    response, response_lengths = ids(ANSWERS)
    return dict(
        speech=pad(waves, 0.0),
        speech_lengths=torch.tensor([len(w) for w in waves]),
        text=text,
        text_lengths=text_lengths,
        response=response,
        response_lengths=response_lengths,
        utt_id=["a", "b", "c"],  # what ESPnet's trainer adds
    )


def build(llm: Path, **model_conf):
    """A tiny speech tokenizer (`tiny_model_args`), the same weights for the same seed."""
    from espnet_alignchat.task import AlignChatTask

    torch.manual_seed(0)
    return AlignChatTask.build_model(tiny_model_args(llm, **model_conf))


# A spoken-QA toy set: transcript and the answer a stage-2 model is trained on.
UTTERANCES = {
    f"spk{s}_utt{i}": {"text": text, "response": answer}
    for s in (1, 2)
    for i, (text, answer) in enumerate(
        [
            ("what is two plus three", "five"),
            ("what is one plus one", "two"),
            ("say hello world", "hello world"),
            ("what is ten minus four", "six"),
        ]
    )
}


def data_args(data: Path, split: str, response: bool) -> List[str]:
    """ESPnet's ``--{split}_data_path_and_name_and_type`` options for a data dir."""
    entries = [("wav.scp", "speech", "sound"), ("text", "text", "text")]
    if response:
        entries.append(("response", "response", "text"))
    return [
        arg
        for path, name, kind in entries
        for arg in (
            f"--{split}_data_path_and_name_and_type",
            f"{data / path},{name},{kind}",
        )
    ]


def train(
    tmp: Path,
    llm: Path,
    data: Path,
    stats: Path,
    out: Path,
    mode: str,
    *extra,
    model: str = "alignchat",
    **model_conf,
):
    """One training stage (`mode`) of `model` through ESPnet's own `main`, with
    `TINY_TRAINING` and `model_conf`."""
    config = tmp / f"{model}_{mode}.yaml"
    conf = dict(TINY_TRAINING, model=model, model_conf={"mode": mode, **model_conf})
    conf["normalize_conf"] = {"stats_file": str(stats / "train" / "feats_stats.npz")}
    config.write_text(yaml.safe_dump(conf))
    from espnet_alignchat.bin import alignchat_train

    alignchat_train.main(
        ["--config", str(config), "--llm", str(llm), "--output_dir", str(out)]
        + data_args(data, "train", mode == "instruct")
        + data_args(data, "valid", mode == "instruct")
        + ["--train_shape_file", str(stats / "train" / "speech_shape")]
        + ["--valid_shape_file", str(stats / "valid" / "speech_shape")]
        + list(extra)
    )


def collect_stats(llm: Path, data: Path, stats: Path) -> None:
    """ESPnet's --collect_stats on `data`: shape files and global_mvn's feature statistics."""
    from espnet_alignchat.bin import alignchat_train

    alignchat_train.main(
        ["--llm", str(llm), "--output_dir", str(stats), "--collect_stats", "true"]
        + ["--frontend_conf", "n_fft=256", "--frontend_conf", "hop_length=160"]
        + ["--frontend_conf", "n_mels=20", "--batch_type", "unsorted"]
        # The statistics global_mvn will read do not exist yet: collecting them needs none.
        + ["--normalize", "global_mvn"]
        + ["--num_workers", "0"]
        + data_args(data, "train", False)
        + data_args(data, "valid", False)
        + ["--train_shape_file", str(data / "wav.scp")]
        + ["--valid_shape_file", str(data / "wav.scp")]
    )


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: tiny models are fastest so, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory, tiny_llm) -> Path:
    """A recipe dir: ``data/``, ``exp/stats`` and a stage-1 model ``exp/tiny`` trained there.

    Everything is run from inside the recipe dir with relative paths, as ``run.sh`` does, so
    the model's ``config.yaml`` names its feature statistics relative to the recipe dir.
    """
    root = tmp_path_factory.mktemp("recipe")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with one_thread():
            data, stats = write_data_dir(Path("data"), UTTERANCES), Path("exp/stats")
            collect_stats(tiny_llm, data, stats)
            train(Path("exp"), tiny_llm, data, stats, Path("exp/tiny"), "pretrain")
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> Path:
    """A random Whisper, written as CTranslate2 stores it and converted as the recipe does."""
    from fake_assets import tiny_ct2_whisper

    from espnet_alignchat.convert import convert_ct2_whisper

    root = tmp_path_factory.mktemp("tiny_whisper")
    tiny_ct2_whisper(root / "ct2", max_source_positions=1500, max_target_positions=448)
    return convert_ct2_whisper(root / "ct2", root / "whisper")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """A copy of the recipe dir (links to its scripts, as ESPnet recipes share them)."""
    return link_recipe(tmp_path_factory.mktemp("egs2") / "alignchat")
