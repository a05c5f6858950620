"""Bad input everywhere it can enter: a corpus holding every kind a real one holds, each entry
point run on it as a user runs it, and for each (entry point, kind) whether it was handled.

    from espnet_alignchat.bad_inputs import markdown_table, run_suite
    records = run_suite(Path("bad_inputs"))   # builds its own LLM, audio and tiny model
    print(markdown_table(records))

Nothing is downloaded: the audio is made here with numpy (a chirp per word), the LLM is a random
one (`testing.save_random_llm`) and the model is trained by the suite's own run of
``alignchat_train``, so the suite runs on a fresh machine. The command-line entry points run as
subprocesses with their usual options; ``Speech2Chat`` is called in this process.

What "handled" means is written down per entry point and kind in `HANDLING`:

- ``processed``: the input is used as it should be. Stereo is downmixed and 8/44.1/48 kHz
  resampled (the data outputs are mono at 16 kHz with the source's duration); CRLF lines, a
  byte-order mark and unsorted ids are read as meant; two minutes of audio are processed, except
  by ``format_data``, whose ``--max_duration`` (30 s) refuses it as documented.
- ``skipped``: exactly one line of the run's log names the utterance (or file and line) with
  the reason, the list beside the outputs (``dropped``, ``skipped``, ``skipped_train``,
  ``<output>.skipped``) names it too, and it is not in the outputs. For a repeated id the later
  line is what is skipped: the utterance is processed as its first line says. ``Speech2Chat``
  keeps one answer per input, so there a bad input raises `InputError` with a one-line message
  naming the file; the chat command prints one error line naming the file.

Audio whose every sample is 0 is valid audio of a silent recording, not a broken file, so it is
processed, with two exceptions that refuse it on purpose: ``format_data``'s filter of training
sets (a transcript over no sound teaches the tokenizer to hear words in silence) and the chat
command (`session.ChatSession` refuses silence, since a person talking to it wants to know).

Every record also requires of its run: no ``Traceback`` in its output, its exit status (0 when
something was processed; the chat command 1 when a file was not answered), a summary whose
count equals the length of its list, and every good utterance in the outputs.
"""

import codecs
import json
import logging
import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import soundfile
import torch
import yaml

from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.errors import InputError
from espnet_alignchat.testing import save_random_llm

FORMAT_DATA = "format_data"
TRAIN = "alignchat_train"
GENERATE = "generate_responses"
INFERENCE = "alignchat_inference"
CHAT = "chat"
API = "Speech2Chat"
VOICEBENCH = "voicebench_infer"
ENTRY_POINTS = (FORMAT_DATA, TRAIN, GENERATE, INFERENCE, CHAT, API, VOICEBENCH)

PROCESSED, SKIPPED = "processed", "skipped"

# Each kind: what the corpus holds of it. Its utterance id (and audio file name) is the kind.
KINDS = {
    "missing_file": "wav.scp names a file that does not exist",
    "empty_file": "a file of 0 bytes",
    "truncated_file": "a WAV file cut to half its bytes",
    "not_audio": "a text file named .wav",
    "nan_samples": "a float WAV with NaN samples",
    "all_zero": "audio whose every sample is 0",
    "failing_pipe": "a wav.scp command that fails (cat of a missing file)",
    "segment_past_end": "a segment ending 4 s past its 1-s recording",
    "stereo": "two channels",
    "rate_8k": "audio at 8 kHz",
    "rate_44k": "audio at 44.1 kHz",
    "rate_48k": "audio at 48 kHz",
    "minutes_long": "two minutes of audio",
    "empty_transcript": "a text line with the id alone (JSONL: an empty prompt)",
    "id_without_text": "audio, but no line in text",
    "id_without_audio": "in text (or a key file) only (JSONL: no audio field)",
    "duplicate_id": "a second line in every file",
    "unsorted_ids": "each file in another unsorted order",
    "crlf": "lines ending in CRLF",
    "bom": "files starting with a UTF-8 byte-order mark",
    "not_utf8": "a line with a Latin-1 byte",
}
UNREADABLE = (
    "missing_file",
    "empty_file",
    "truncated_file",
    "not_audio",
    "nan_samples",
)
CONVERTED = ("stereo", "rate_8k", "rate_44k", "rate_48k")
READ_AS_MEANT = ("unsorted_ids", "crlf", "bom")


def _table(**how: str) -> Dict[str, str]:
    return how


_AUDIO_FILES = _table(
    **{kind: SKIPPED for kind in UNREADABLE},
    **{kind: PROCESSED for kind in CONVERTED},
    all_zero=PROCESSED,
    minutes_long=PROCESSED,
)
_TEXT_FILES = _table(
    duplicate_id=SKIPPED,
    not_utf8=SKIPPED,
    **{kind: PROCESSED for kind in READ_AS_MEANT},
)
# entry point -> kind -> how it is handled; a kind an entry point never reads is absent.
HANDLING: Dict[str, Dict[str, str]] = {
    FORMAT_DATA: {
        **_AUDIO_FILES,
        **_TEXT_FILES,
        "all_zero": SKIPPED,
        "minutes_long": SKIPPED,
        "failing_pipe": SKIPPED,
        "segment_past_end": SKIPPED,
        "empty_transcript": SKIPPED,
        "id_without_text": SKIPPED,
        "id_without_audio": SKIPPED,
    },
    TRAIN: {
        **_AUDIO_FILES,
        **_TEXT_FILES,
        "failing_pipe": SKIPPED,
        "empty_transcript": SKIPPED,
        "id_without_text": SKIPPED,
        "id_without_audio": SKIPPED,
    },
    GENERATE: {**_TEXT_FILES, "empty_transcript": SKIPPED, "id_without_text": SKIPPED},
    INFERENCE: {
        **_AUDIO_FILES,
        **_TEXT_FILES,
        "failing_pipe": SKIPPED,
        "segment_past_end": SKIPPED,
        "id_without_audio": SKIPPED,
    },
    CHAT: {**_AUDIO_FILES, "all_zero": SKIPPED},
    API: dict(_AUDIO_FILES),
    VOICEBENCH: {
        **_AUDIO_FILES,
        "empty_transcript": SKIPPED,
        "id_without_audio": SKIPPED,
        "crlf": PROCESSED,
        "bom": PROCESSED,
        "not_utf8": SKIPPED,
    },
}


@dataclass
class Record:
    """Whether `entry_point` handled `kind` as `how` says, and the line the user saw."""

    entry_point: str
    kind: str
    handled: bool
    line: str
    how: str


# -- the corpus -------------------------------------------------------------------------------

WORDS = (
    "what is one two three four five six seven eight nine ten plus minus times "
    "yes no hello world the answer say again please thank you big small"
).split()
SENTENCES = [
    "what is two plus three",
    "what is one plus one",
    "say hello world",
    "what is ten minus four",
    "what is six times two",
    "thank you",
    "say the answer again please",
    "is four big or small",
]
RATE = 16000
GOOD = [f"good{i}" for i in range(1, 7)]
LONG_SECONDS = 120.0
PAST_END = ("0.5", "5.0")  # the segment of segment_past_end's 1-s recording


def spoken(words: List[str], rate: int, rng: np.random.Generator) -> np.ndarray:
    """A stand-in utterance: a short chirp per word (its pitch set by the word), a pause
    after each, and a little noise."""
    pieces = []
    for word in words:
        t = np.arange(int((0.12 + 0.02 * (len(word) % 3)) * rate)) / rate
        pitch = 200 + 40 * (WORDS.index(word) if word in WORDS else 0)
        pieces += [0.3 * np.sin(2 * np.pi * pitch * t), np.zeros(int(0.03 * rate))]
    samples = np.concatenate(pieces)
    return (samples + 0.01 * rng.standard_normal(len(samples))).astype(np.float32)


@dataclass
class Corpus:
    """The files the suite made: ids → transcripts and audio files."""

    root: Path
    texts: Dict[str, str]  # each utterance's transcript (its first text line)
    audio: Dict[str, Path]  # each utterance's audio file, where it has one
    durations: Dict[str, float]  # seconds of each readable audio file

    def path(self, name: str) -> Path:
        return self.root / name


def transcript(utt_id: str) -> str:
    index = (GOOD + list(KINDS)).index(utt_id)
    return SENTENCES[index % len(SENTENCES)]


def write_audio(kind: str, words: List[str], path: Path, rng) -> Optional[float]:
    """The audio file of an utterance of `kind`; its seconds, None if it cannot be read."""
    speech = spoken(words, RATE, rng)
    if kind == "missing_file":
        return None
    if kind == "empty_file":
        path.write_bytes(b"")
        return None
    if kind == "not_audio":
        path.write_text("this is not audio\n")
        return None
    if kind == "truncated_file":
        soundfile.write(path, speech, RATE, subtype="PCM_16")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return None
    if kind == "nan_samples":
        speech[len(speech) // 2 :: 100] = np.nan
        soundfile.write(path, speech, RATE, subtype="FLOAT")
        return None
    rate = {"rate_8k": 8000, "rate_44k": 44100, "rate_48k": 48000}.get(kind, RATE)
    if kind == "all_zero":
        speech = np.zeros(RATE, dtype=np.float32)
    elif kind == "stereo":
        speech = np.stack([speech, speech], axis=1)  # the mono original: `stereo_twin`
    elif kind == "minutes_long":
        pause = np.zeros(2 * RATE, dtype=np.float32)
        repeats = int(LONG_SECONDS * RATE) // (len(speech) + len(pause)) + 1
        speech = np.tile(np.concatenate([speech, pause]), repeats)
        speech = speech[: int(LONG_SECONDS * RATE)]
    elif rate != RATE:
        speech = spoken(words, rate, rng)
    soundfile.write(path, speech, rate, subtype="PCM_16")
    return len(speech) / rate


def build_audio(root: Path) -> Tuple[Dict[str, Path], Dict[str, float]]:
    """One file per good utterance and per audio kind (named after it) in ``root/audio``."""
    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files, durations = {}, {}
    kinds = [*UNREADABLE, "all_zero", *CONVERTED, "minutes_long"]
    speaking = GOOD + kinds + ["segment_past_end", *READ_AS_MEANT[1:]]
    speaking += ["empty_transcript", "id_without_text", "duplicate_id", "not_utf8"]
    for utt_id in speaking:
        path = audio_dir / f"{utt_id}.wav"
        words = transcript(utt_id).split()
        if utt_id == "segment_past_end":
            words = "one two three four".split()  # about 1 s
        kind = utt_id if utt_id in kinds else "good"
        seconds = write_audio(kind, words, path, rng)
        files[utt_id] = path
        if seconds is not None:
            durations[utt_id] = seconds
    # The stereo file's channels are those of a mono file: downmixed, they must be it.
    stereo, _ = soundfile.read(files["stereo"], dtype="int16")
    soundfile.write(audio_dir / "stereo_twin.wav", stereo[:, 0], RATE)
    files["stereo_twin"] = audio_dir / "stereo_twin.wav"
    return files, durations


Line = Tuple[str, bytes]  # (id, the bytes after it)


def write_lines(path: Path, lines: List[Line], repeats: List[Line]) -> None:
    """Kaldi-style lines as a corpus may hold them: the file starts with a byte-order mark,
    ``bom``'s line first, the others in an unsorted order of the file's own, ``crlf``'s line
    ends in CRLF, and `repeats` (second lines of ids) come last."""
    first = [line for line in lines if line[0] == "bom"]
    others = [line for line in lines if line[0] != "bom"]
    random.Random(path.name).shuffle(others)
    body = b""
    for key, value in first + others + repeats:
        end = b"\r\n" if key == "crlf" else b"\n"
        body += key.encode() + (b" " + value if value else b"") + end
    path.write_bytes(codecs.BOM_UTF8 + body)


def text_lines(utt_ids: List[str]) -> List[Line]:
    lines = []
    for utt_id in utt_ids:
        if utt_id == "id_without_text":
            continue
        text = b"" if utt_id == "empty_transcript" else transcript(utt_id).encode()
        if utt_id == "not_utf8":
            text += " caf\xe9".encode("latin-1")
        lines.append((utt_id, text))
    return lines


TEXT_REPEAT = ("duplicate_id", b"this second line must not be used")


def data_utterances(segmented: bool) -> List[str]:
    """The utterances of a Kaldi data dir of the corpus (the kinds a data dir can hold)."""
    kinds = [k for k in KINDS if k not in ("unsorted_ids", "segment_past_end")]
    return GOOD + kinds + (["segment_past_end"] if segmented else [])


def write_plain_dir(path: Path, audio: Dict[str, Path]) -> None:
    """``wav.scp`` (one file per utterance) and ``text`` with every kind of the corpus."""
    path.mkdir(parents=True, exist_ok=True)
    wav = []
    for utt_id in data_utterances(segmented=False):
        if utt_id == "id_without_audio":
            continue
        if utt_id == "failing_pipe":
            entry = f"cat {path / 'nowhere.wav'} |"
        else:
            entry = str(audio[utt_id])
        wav.append((utt_id, entry.encode()))
    repeat = ("duplicate_id", str(path / "second_line.wav").encode())
    write_lines(path / "wav.scp", wav, [repeat])
    write_lines(path / "text", text_lines(data_utterances(False)), [TEXT_REPEAT])


def write_segmented_dir(
    path: Path, audio: Dict[str, Path], durations: Dict[str, float]
) -> None:
    """The same corpus with ``segments``: one recording per utterance (``rec_<id>``), a
    segment of it each; ``not_utf8``'s recording path has a Latin-1 byte."""
    path.mkdir(parents=True, exist_ok=True)
    wav, segments = [], []
    for utt_id in data_utterances(segmented=True):
        if utt_id == "id_without_audio":
            continue
        recording = f"rec_{utt_id}"
        if utt_id == "failing_pipe":
            entry = f"cat {path / 'nowhere.wav'} |".encode()
        elif utt_id == "not_utf8":
            entry = str(path / "caf").encode() + "\xe9.wav".encode("latin-1")
        else:
            entry = str(audio[utt_id]).encode()
        wav.append((recording, entry))
        span = ("0", f"{durations.get(utt_id, 1.0):.3f}")
        if utt_id == "segment_past_end":
            span = PAST_END
        segments.append((utt_id, " ".join((recording, *span)).encode()))
    repeat = ("duplicate_id", b"rec_duplicate_id 0.2 0.4")
    write_lines(path / "wav.scp", wav, [])
    write_lines(path / "segments", segments, [repeat])
    write_lines(path / "text", text_lines(data_utterances(True)), [TEXT_REPEAT])


def write_valid_dir(path: Path, audio: Dict[str, Path]) -> None:
    """A clean validation set of good utterances."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "wav.scp").write_text("".join(f"{u} {audio[u]}\n" for u in GOOD[:4]))
    (path / "text").write_text("".join(f"{u} {transcript(u)}\n" for u in GOOD[:4]))


def jsonl_items(audio: Dict[str, Path]) -> List[Tuple[str, bytes]]:
    """VoiceBench items: (kind or good id, its line); audio paths relative to the file."""
    items = []
    for utt_id in ["bom", *GOOD, *_AUDIO_FILES, "crlf"]:
        item = {"id": utt_id, "prompt": transcript(utt_id)}
        item["audio"] = f"audio/{audio.get(utt_id, Path(f'{utt_id}.wav')).name}"
        items.append((utt_id, json.dumps(item).encode()))
    empty = {"id": "empty_transcript", "prompt": "", "audio": "audio/good1.wav"}
    no_audio = {"id": "id_without_audio", "prompt": transcript("id_without_audio")}
    latin = {"id": "not_utf8", "prompt": "caf\xe9", "audio": "audio/good1.wav"}
    items += [
        ("empty_transcript", json.dumps(empty).encode()),
        ("id_without_audio", json.dumps(no_audio).encode()),
        ("not_utf8", json.dumps(latin, ensure_ascii=False).encode("latin-1")),
    ]
    return items


def write_jsonl(path: Path, items: List[Tuple[str, bytes]]) -> Dict[str, str]:
    """The items as a JSONL file (a byte-order mark, ``crlf``'s line in CRLF); returns each
    item's name as the entry point gives it (``<file>:<line>``)."""
    body = b"".join(line + (b"\r\n" if k == "crlf" else b"\n") for k, line in items)
    path.write_bytes(codecs.BOM_UTF8 + body)
    return {kind: f"{path.name}:{number}" for number, (kind, _) in enumerate(items, 1)}


def build_corpus(root: Path) -> Corpus:
    audio, durations = build_audio(root)
    write_plain_dir(root / "plain", audio)
    write_segmented_dir(root / "segmented", audio, durations)
    write_valid_dir(root / "valid", audio)
    texts = {u: transcript(u) for u in GOOD + list(KINDS)}
    return Corpus(root, texts, audio, durations)


# -- running the entry points -----------------------------------------------------------------


@dataclass
class Run:
    """What a user sees of one command: its exit status and its output."""

    name: str
    status: int
    stdout: str
    stderr: str


def environment() -> Dict[str, str]:
    # The commands import this copy of the package; tiny models: one thread each, as several
    # commands run at once.
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


TRAIN_CONFIG = {
    "frontend_conf": {"n_fft": 256, "hop_length": 160, "n_mels": 20},
    "encoder": "conformer",
    "encoder_conf": {
        "output_size": 32,
        "attention_heads": 2,
        "linear_units": 64,
        "num_blocks": 1,
        "input_layer": "conv2d",
        "cnn_module_kernel": 7,
    },
    "decoder_conf": {
        "attention_dim": 32,
        "attention_heads": 2,
        "linear_units": 64,
        "num_blocks": 1,
    },
    "model_conf": {"mode": "pretrain"},
    "batch_type": "folded",
    "fold_length": [80000],
    "batch_size": 4,
    "max_epoch": 1,
    "num_workers": 0,
    "optim": "adam",
    "optim_conf": {"lr": 0.002},
    "use_tensorboard": False,
    "use_matplotlib": False,
    "num_att_plot": 0,
}


def data_options(split: str, data: Path) -> List[str]:
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
    return {u: corpus.audio[u] for u in [*GOOD, *_AUDIO_FILES, "stereo_twin"]}


def run_answering(corpus: Corpus, model: Path, work: Path) -> Dict[str, Run]:
    """alignchat_inference, the chat command and voicebench_infer, at once."""
    keys = corpus.path(
        "segmented/keys"
    )  # the key file names an utterance without audio
    keys.write_text("".join(f"{u}\n" for u in data_utterances(segmented=True)))
    names = write_jsonl(corpus.path("items.jsonl"), jsonl_items(corpus.audio))
    (corpus.path("names.json")).write_text(json.dumps(names))
    commands = {
        INFERENCE: (
            "espnet_alignchat.bin.alignchat_inference",
            ["--model_dir", model, "--data_dir", corpus.path("segmented")]
            + ["--key_file", keys, "--output_dir", work / "decode"]
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


# -- judging what the user saw ----------------------------------------------------------------


def lines_naming(text: str, key: str) -> List[str]:
    """The lines of `text` that name `key` as a whole word (not inside a path or a longer id)."""
    pattern = re.compile(rf"(?<![\w./-]){re.escape(key)}(?![\w./-])")
    return [line.strip() for line in re.split(r"[\r\n]+", text) if pattern.search(line)]


def run_problems(
    run: Run,
    expected_status: int,
    counted: Optional[int],
    listed: Optional[Dict[str, str]],
    missing_good: List[str],
) -> List[str]:
    """What is wrong with a run as a whole: a traceback, its exit status, a summary whose
    count (`counted`, None: not found) is not the length of its list, good ones missing.
    """
    problems = []
    if "Traceback" in run.stderr + run.stdout:
        problems.append(f"{run.name} printed a traceback")
    if run.status != expected_status:
        problems.append(f"{run.name} exited with {run.status}")
    if listed is not None and counted != len(listed):
        problems.append(
            f"{run.name}'s summary counts {counted}, its list {len(listed)}"
        )
    if missing_good:
        problems.append(f"good utterances missing: {', '.join(missing_good)}")
    return problems


@dataclass
class Seen:
    """What an entry point showed of one input."""

    told: List[str]  # the lines of its log that name the input
    listed: Optional[
        bool
    ]  # whether its list of what it left out names it (None: no list)
    output: Optional[str]  # its output line, None when it is not in the outputs
    wrong: Optional[str] = None  # what is wrong with the output, if anything


def judge(entry_point: str, kind: str, seen: Seen, problems: List[str]) -> Record:
    """The record of one input, from what was seen of it and of its run (`problems`)."""
    how = HANDLING[entry_point][kind]
    problems = list(problems)
    if how == SKIPPED:
        if len(seen.told) != 1:
            problems.append(f"{len(seen.told)} lines of the log name it")
        if seen.listed is False:
            problems.append("its list of what was left out does not name it")
        if kind == "duplicate_id":  # the later lines skipped, the first used
            if seen.output is None or seen.wrong:
                problems.append(seen.wrong or "not processed as its first line says")
        elif seen.output is not None:
            problems.append(f"in the outputs: {seen.output}")
        line = seen.told[0] if seen.told else ""
    else:
        if seen.output is None:
            problems.append("not in the outputs")
        if seen.told:
            problems.append(f"the log names it: {seen.told[0]}")
        if seen.wrong:
            problems.append(seen.wrong)
        line = seen.output or ""
    if problems:
        line = f"{line} [not handled: {'; '.join(problems)}]".strip()
    return Record(entry_point, kind, not problems, line, how)


def count(pattern: str, text: str) -> Optional[int]:
    """The number the summary line matching `pattern` gives (its first group, summed with any
    second), None without such a line."""
    found = re.search(pattern, text)
    if found is None:
        return None
    return sum(int(group) for group in found.groups() if group is not None)


def read_map(path: Path) -> Dict[str, str]:
    return read_kaldi_map(path) if path.is_file() else {}


def close(actual: float, expected: float) -> bool:
    return abs(actual - expected) <= 0.01 * expected


def judge_data_outputs(
    entry_point: str,
    run: Run,
    problems: List[str],
    listed: Dict[str, str],
    outputs: Dict[str, str],
    check: Callable[[str], Optional[str]] = lambda kind: None,
) -> List[Record]:
    """The records of an entry point that reads a Kaldi data dir: each kind's utterance id
    is its key; `outputs` maps the utterances processed to their output; `check` says what
    is wrong with a kind's output."""
    records = []
    for kind in HANDLING[entry_point]:
        if kind == "unsorted_ids":  # the whole corpus is unsorted: all good ones done
            done = all(u in outputs for u in GOOD)
            seen = Seen([], None, "every good utterance processed" if done else None)
        else:
            output = f"{kind} {outputs[kind]}".strip() if kind in outputs else None
            seen = Seen(lines_naming(run.stderr, kind), kind in listed, output)
            seen.wrong = check(kind) if output is not None else None
        records.append(judge(entry_point, kind, seen, problems))
    return records


def judge_format_data(run: Run, corpus: Corpus, work: Path) -> List[Record]:
    dump = work / "dump"
    listed = read_map(dump / "dropped")
    texts, lengths = read_map(dump / "text"), read_map(dump / "utt2num_samples")
    wav = read_map(dump / "wav.scp")

    def check(kind: str) -> Optional[str]:
        if kind in ("crlf", "bom", "duplicate_id") and texts.get(kind) != transcript(
            kind
        ):
            return f"its text is {texts.get(kind)!r}"
        seconds = int(lengths[kind]) / RATE
        info = soundfile.info(wav[kind])
        if (info.samplerate, info.channels) != (RATE, 1):
            return f"written at {info.samplerate} Hz with {info.channels} channels"
        if kind in corpus.durations and not close(seconds, corpus.durations[kind]):
            return f"{seconds:.2f} s written of {corpus.durations[kind]:.2f} s"
        if kind == "stereo":
            twin, _ = soundfile.read(corpus.audio["stereo_twin"], dtype="int16")
            written, _ = soundfile.read(wav[kind], dtype="int16")
            if not np.array_equal(written, twin):
                return "not the mean of its channels"
        return None

    counted = count(r"(\d+) dropped(?:.*; (\d+) ids with a second line)?", run.stdout)
    problems = run_problems(
        run, 0, counted, listed, [u for u in GOOD if u not in texts]
    )
    return judge_data_outputs(FORMAT_DATA, run, problems, listed, texts, check)


def judge_training(
    stats: Run, training: Run, corpus: Corpus, work: Path
) -> List[Record]:
    """The kinds are met by --collect_stats: the shape files list what training will read."""
    listed = read_map(work / "stats/skipped_train")
    shapes = read_map(work / "stats/train/speech_shape")

    def check(kind: str) -> Optional[str]:
        if "," in shapes[kind]:
            return f"read with shape {shapes[kind]}, not mono"
        seconds = int(shapes[kind]) / RATE
        if kind in corpus.durations and not close(seconds, corpus.durations[kind]):
            return f"{seconds:.2f} s read of {corpus.durations[kind]:.2f} s"
        return None

    counted = count(
        r"(\d+) train utterances \(or their lines\) were skipped", stats.stderr
    )
    problems = run_problems(
        stats, 0, counted, listed, [u for u in GOOD if u not in shapes]
    )
    problems += run_problems(training, 0, None, None, [])
    if not (work / "exp/1epoch.pth").is_file():
        problems.append("training wrote no checkpoint")
    return judge_data_outputs(TRAIN, stats, problems, listed, shapes, check)


def judge_listing_run(
    entry_point: str, run: Run, out_dir: Path, outputs: str
) -> List[Record]:
    """generate_responses and alignchat_inference: ``skipped`` and a Kaldi map of outputs."""
    listed = read_map(out_dir / "skipped")
    answers = read_map(out_dir / outputs)
    counted = count(r"(\d+) skipped \(listed in", run.stderr) if listed else 0
    problems = run_problems(
        run, 0, counted, listed, [u for u in GOOD if u not in answers]
    )
    return judge_data_outputs(entry_point, run, problems, listed, answers)


def judge_chat(run: Run, corpus: Corpus) -> List[Record]:
    files = chat_files(corpus)
    answers = {}
    for name, path in files.items():
        prefix = f"{path}: "
        answered = [line for line in run.stdout.splitlines() if line.startswith(prefix)]
        if answered:
            answers[name] = answered[0].removeprefix(prefix)
    expected = sum(how == SKIPPED for how in HANDLING[CHAT].values())
    counted = count(r"(\d+) of \d+ files could not be answered", run.stderr)
    problems = run_problems(run, 1, None, None, [u for u in GOOD if u not in answers])
    if counted != expected:
        problems.append(f"the summary counts {counted} of the {expected} refused")
    records = []
    for kind in HANDLING[CHAT]:
        path = str(files[kind])
        output = f"{path}: {answers[kind]}" if kind in answers else None
        seen = Seen(lines_naming(run.stderr, path), None, output)
        if kind == "stereo" and answers.get(kind) != answers.get("stereo_twin"):
            seen.wrong = "answered otherwise than its mono original"
        records.append(judge(CHAT, kind, seen, problems))
    return records


# The outputs of voicebench_infer (one per modality) in which a kind shows: the audio one,
# unless the kind is in the text or in the file itself.
VOICEBENCH_MODALITIES = {
    "empty_transcript": ("text",),
    "crlf": ("audio", "text"),
    "bom": ("audio", "text"),
    "not_utf8": ("audio", "text"),
}


def judge_voicebench(run: Run, corpus: Corpus, work: Path) -> List[Record]:
    """Each item is named ``items.jsonl:<line>``; its kind is its ``id`` field."""
    names = json.loads(corpus.path("names.json").read_text())
    answered, listed = {}, {}
    for modality in ("audio", "text"):
        path = work / f"voicebench/alignchat-items-test-{modality}.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        answered[modality] = {json.loads(line)["id"]: line for line in lines}
        listed[modality] = read_map(path.with_name(f"{path.name}.skipped"))
    missing = [u for u in GOOD if u not in answered["audio"]]
    problems = run_problems(run, 0, None, None, missing)
    for modality in ("audio", "text"):
        file = f"alignchat-items-test-{modality}.jsonl.skipped"
        counted = count(
            rf"(\d+) skipped \(listed in \S+/{re.escape(file)}\)", run.stderr
        )
        if (counted or 0) != len(listed[modality]):
            problems.append(
                f"the {modality} summary counts {counted}, its list "
                f"{len(listed[modality])}"
            )
    records = []
    for kind, how in HANDLING[VOICEBENCH].items():
        key = names[kind]
        modalities = VOICEBENCH_MODALITIES.get(kind, ("audio",))
        outputs = [answered[m][kind] for m in modalities if kind in answered[m]]
        # Processed: in every output that reads it; skipped: in none.
        whole = how == SKIPPED or len(outputs) == len(modalities)
        output = outputs[0] if outputs and whole else None
        in_lists = all(key in listed[m] for m in modalities)
        seen = Seen(lines_naming(run.stderr, key), in_lists, output)
        records.append(judge(VOICEBENCH, kind, seen, problems))
    return records


def judge_api(corpus: Corpus, model: Path) -> List[Record]:
    """`Speech2Chat` in this process: an answer, or an `InputError` naming the file."""
    from espnet_alignchat.inference import Speech2Chat

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # beside the commands of `run_answering`
    try:
        chat = Speech2Chat.from_pretrained(
            model, device="cpu", generation={"max_new_tokens": 4}
        )
        outcomes = {}
        for name, path in chat_files(corpus).items():
            try:
                heard = chat.transcribe(str(path)) if "stereo" in name else None
                outcomes[name] = ("answer", chat(str(path)), heard)
            except InputError as error:
                outcomes[name] = ("error", str(error), None)
    except Exception as error:  # recorded for every kind, not raised: it is a finding
        problem = f"{type(error).__name__}: {error}"
        return [
            Record(API, kind, False, problem, how)
            for kind, how in HANDLING[API].items()
        ]
    finally:
        torch.set_num_threads(threads)
    missing = [u for u in GOOD if outcomes[u][0] != "answer"]
    problems = (
        [f"good utterances not answered: {', '.join(missing)}"] if missing else []
    )
    records = []
    for kind in HANDLING[API]:
        path = str(chat_files(corpus)[kind])
        outcome, text, heard = outcomes[kind]
        if outcome == "error":
            one_line = "\n" not in text and path in text
            seen = Seen([text] if one_line else [], None, None)
        else:
            seen = Seen([], None, f"{path}: {text}")
            if kind == "stereo" and heard != outcomes["stereo_twin"][2]:
                seen.wrong = "heard otherwise than its mono original"
        records.append(judge(API, kind, seen, problems))
    return records


# -- the suite --------------------------------------------------------------------------------


def run_suite(work_dir: Path) -> List[Record]:
    """Build the corpus, LLM and model in `work_dir`, run every entry point on the corpus and
    return one record per (entry point, kind) of `HANDLING`. Each command's output is kept in
    ``work_dir/logs``. Two commands run at a time where they do not depend on each other.
    """
    work_dir = Path(work_dir).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    logging.info(f"bad-input suite in {work_dir}")
    llm = save_random_llm(work_dir / "llm", WORDS)
    corpus = build_corpus(work_dir / "corpus")
    with ThreadPoolExecutor(2) as pool:
        training = pool.submit(run_training, corpus, llm, work_dir)
        preparing = pool.submit(run_format_and_generate, corpus, llm, work_dir)
        (stats, train), (formatted, generated) = training.result(), preparing.result()
    model = work_dir / "exp"
    with ThreadPoolExecutor(1) as pool:
        answering = pool.submit(run_answering, corpus, model, work_dir)
        api = judge_api(corpus, model)
        runs = answering.result()
    return [
        *judge_format_data(formatted, corpus, work_dir),
        *judge_training(stats, train, corpus, work_dir),
        *judge_listing_run(GENERATE, generated, work_dir / "gen", "response"),
        *judge_listing_run(INFERENCE, runs[INFERENCE], work_dir / "decode", "response"),
        *judge_chat(runs[CHAT], corpus),
        *api,
        *judge_voicebench(runs[VOICEBENCH], corpus, work_dir),
    ]


def markdown_table(records: List[Record]) -> str:
    """Kinds × entry points: how each kind was handled (✓) or not (✗); – where an entry
    point never reads that kind; and each entry point's count of inputs handled."""
    cells = {(r.entry_point, r.kind): r for r in records}
    header = ["kind", *ENTRY_POINTS]
    rows = [header, ["---"] * len(header)]
    for kind in KINDS:
        row = [kind]
        for entry_point in ENTRY_POINTS:
            record = cells.get((entry_point, kind))
            mark = (
                "–"
                if record is None
                else ("✓ " if record.handled else "✗ ") + record.how
            )
            row.append(mark)
        rows.append(row)
    totals = ["handled"]
    for entry_point in ENTRY_POINTS:
        mine = [r for r in records if r.entry_point == entry_point]
        totals.append(f"{sum(r.handled for r in mine)}/{len(mine)}")
    rows.append(totals)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"
