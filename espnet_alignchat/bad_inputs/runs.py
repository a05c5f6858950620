"""Each entry point run on the corpus as a user runs it: the commands as subprocesses, with
their usual options, two at a time where they do not depend on each other."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import yaml

from espnet_alignchat.bad_inputs.corpus import GOOD, Corpus
from espnet_alignchat.bad_inputs.kinds import (
    AUDIO_FILES,
    CHAT,
    FORMAT_DATA,
    GENERATE,
    INFERENCE,
    VOICEBENCH,
)
from espnet_alignchat.testing import TINY_TRAINING


@dataclass
class Run:
    """What a user sees of one command: its exit status and its output."""

    name: str
    status: int
    stdout: str
    stderr: str


def environment() -> Dict[str, str]:
    """The commands' environment: they import this copy of the package, and run on one
    thread each (tiny models, and several commands at once)."""
    package_root = str(Path(__file__).resolve().parents[1])
    paths = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(paths))


def run(name: str, module: str, args: List[str], logs: Path) -> Run:
    """``python -m <module> <args>``; its output is kept in ``logs/<name>.{out,err}``."""
    result = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        env=environment(),
    )
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{name}.out").write_text(result.stdout, encoding="utf-8")
    (logs / f"{name}.err").write_text(result.stderr, encoding="utf-8")
    return Run(name, result.returncode, result.stdout, result.stderr)


# utterance_mvn: the suite's training is given no feature statistics file (global_mvn's).
TRAIN_CONFIG = dict(
    TINY_TRAINING,
    normalize="utterance_mvn",
    model_conf={"mode": "pretrain"},
    optim_conf={"lr": 0.002},
    use_matplotlib=False,
    num_att_plot=0,
)


def data_options(split: str, data: Path) -> List[str]:
    """ESPnet's options for the audio and the transcripts of a data dir."""
    return [
        f"--{split}_data_path_and_name_and_type",
        f"{data / 'wav.scp'},speech,sound",
        f"--{split}_data_path_and_name_and_type",
        f"{data / 'text'},text,text",
    ]


def run_training(corpus: Corpus, llm: Path, work: Path) -> Tuple[Run, Run]:
    """Shape files (``--collect_stats``) and one short stage-1 training, as stage 3 and 4 do:
    the model the other entry points answer with."""
    config = work / "train.yaml"
    config.write_text(yaml.safe_dump(TRAIN_CONFIG))
    data = data_options("train", corpus.path("plain"))
    data += data_options("valid", corpus.path("valid"))
    common = ["--config", config, "--llm", llm, *data]
    stats = run(
        "collect_stats",
        "espnet_alignchat.bin.alignchat_train",
        [*common, "--collect_stats", "true", "--batch_type", "unsorted"]
        + ["--output_dir", work / "stats"]
        + ["--train_shape_file", corpus.path("plain/wav.scp")]
        + ["--valid_shape_file", corpus.path("valid/wav.scp")],
        work / "logs",
    )
    training = run(
        "train",
        "espnet_alignchat.bin.alignchat_train",
        [*common, "--output_dir", work / "exp"]
        + ["--train_shape_file", work / "stats/train/speech_shape"]
        + ["--valid_shape_file", work / "stats/valid/speech_shape"],
        work / "logs",
    )
    return stats, training


def run_format_and_generate(corpus: Corpus, llm: Path, work: Path) -> Tuple[Run, Run]:
    """format_data on the segmented dir (stage 2), self-generation on the plain one (its
    wav.scp as the key file, as stage 5 splits it)."""
    formatted = run(
        FORMAT_DATA,
        "espnet_alignchat.bin.format_data",
        ["--in_dir", corpus.path("segmented"), "--out_dir", work / "dump"]
        + ["--llm", llm, "--nj", "1"],
        work / "logs",
    )
    generated = run(
        GENERATE,
        "espnet_alignchat.bin.generate_responses",
        ["--llm", llm, "--data_dir", corpus.path("plain"), "--output_dir", work / "gen"]
        + ["--key_file", corpus.path("plain/wav.scp"), "--max_new_tokens", "4"],
        work / "logs",
    )
    return formatted, generated


def chat_files(corpus: Corpus) -> Dict[str, Path]:
    """The audio files the chat command and `Speech2Chat` are given, by kind or good id."""
    return {u: corpus.audio[u] for u in [*GOOD, *AUDIO_FILES, "stereo_twin"]}


def run_answering(corpus: Corpus, model: Path, work: Path) -> Dict[str, Run]:
    """alignchat_inference, the chat command and voicebench_infer, at once."""
    commands = {
        INFERENCE: (
            "espnet_alignchat.bin.alignchat_inference",
            ["--model_dir", model, "--data_dir", corpus.path("segmented")]
            + ["--key_file", corpus.path("segmented/keys")]
            + ["--output_dir", work / "decode"]
            + ["--max_new_tokens", "4", "--batch_size", "2"],
        ),
        CHAT: (
            "espnet_alignchat",
            ["chat", "--model", model, "--device", "cpu", "--max_new_tokens", "4"]
            + ["--wav", *chat_files(corpus).values()],
        ),
        VOICEBENCH: (
            "espnet_alignchat.bin.voicebench_infer",
            ["--jsonl", corpus.path("items.jsonl"), "--model", model]
            + ["--device", "cpu", "--output_dir", work / "voicebench"]
            + ["--max_new_tokens", "4", "--batch_size", "2"],
        ),
    }
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {
            name: pool.submit(run, name, module, args, work / "logs")
            for name, (module, args) in commands.items()
        }
        return {name: future.result() for name, future in futures.items()}
