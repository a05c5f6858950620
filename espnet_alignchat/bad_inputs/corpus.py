"""The corpus of the suite, made here with numpy: good utterances and one of each kind, as
Kaldi data dirs (one with ``segments``, one without, a clean validation set), audio files and
a VoiceBench JSONL file."""

import codecs
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import soundfile

from espnet_alignchat.bad_inputs.kinds import (
    AUDIO_FILES,
    CONVERTED,
    KINDS,
    UNREADABLE,
)

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
PAST_END = ("0.5", "5.0")  # the segment of segment_past_end's recording (0.66 s)


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
    """The files the suite made (`transcript` gives each utterance's text)."""

    root: Path
    jsonl_names: Dict[str, str]  # the name voicebench_infer gives each JSONL item
    audio: Dict[str, Path]  # each utterance's audio file, where it has one
    durations: Dict[str, float]  # seconds of each readable audio file

    def path(self, name: str) -> Path:
        return self.root / name


def transcript(utt_id: str) -> str:
    """The transcript of a good utterance or of a kind's (its first line in ``text``)."""
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
        speech = np.stack([speech, speech], axis=1)
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
    # The other kinds are in the data files, and their audio is good.
    speaking = GOOD + kinds + ["segment_past_end", "crlf", "bom", "empty_transcript"]
    speaking += ["id_without_text", "duplicate_id", "not_utf8"]
    for utt_id in speaking:
        path = audio_dir / f"{utt_id}.wav"
        words = transcript(utt_id).split()
        if utt_id == "segment_past_end":
            words = "one two three four".split()  # 0.66 s: `PAST_END` is past its end
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
    """The ``text`` lines of `utt_ids`: none for ``id_without_text``, the id alone for
    ``empty_transcript``, a Latin-1 byte in ``not_utf8``'s."""
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
    for utt_id in ["bom", *GOOD, *AUDIO_FILES, "crlf"]:
        item = {"id": utt_id, "prompt": transcript(utt_id)}
        item["audio"] = f"audio/{audio[utt_id].name}"
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
    """The audio files, the Kaldi data dirs and the JSONL file in `root`."""
    audio, durations = build_audio(root)
    write_plain_dir(root / "plain", audio)
    write_segmented_dir(root / "segmented", audio, durations)
    write_valid_dir(root / "valid", audio)
    # A key file for the segmented dir: it names an utterance that has no audio.
    ids = data_utterances(segmented=True)
    (root / "segmented/keys").write_text("".join(f"{u}\n" for u in ids))
    names = write_jsonl(root / "items.jsonl", jsonl_items(audio))
    return Corpus(root, names, audio, durations)
