"""Kaldi data directories: reading ``wav.scp`` (with ``segments``), ``text`` and friends.

Every utterance is read on its own, so one unreadable file is reported and skipped by the caller
instead of stopping a whole set. ``wav.scp`` entries may be a path in any format soundfile reads,
a Kaldi ark offset (``foo.ark:123``) or a command ending in ``|`` whose output is audio.
The text files are read line by line as corpora hold them (CRLF line ends, a UTF-8 byte-order
mark, ids in any order); a line that is not UTF-8 or repeats an id is left out and named, so
one such line costs one utterance (or nothing, for a repeat), never the set.
"""

import codecs
import io
import os
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Set, Tuple

import kaldiio
import numpy as np
import soundfile
import torch
import torchaudio

from espnet_alignchat.atomic import atomic_open
from espnet_alignchat.errors import InputError
from espnet_alignchat.preprocessor import check_speech


def read_kaldi_map(
    path: Path, left_out: Optional[Dict[str, str]] = None
) -> Dict[str, str]:
    """``<key> <value>`` lines → dict, in file order; an empty value is allowed.

    Lines may end in CRLF and the file may start with a UTF-8 byte-order mark. A line that is
    not UTF-8, or repeats a key (the first line is kept), is left out: with `left_out` its key
    and the reason (naming the file and line) are put there; without, it is an `InputError`.
    """
    entries: Dict[str, str] = {}
    first_lines: Dict[str, int] = {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw.strip():
                continue
            problem = None
            try:
                parts = raw.decode("utf-8").strip().split(maxsplit=1)
                key = parts[0]
                if key in entries:
                    problem = (
                        f"{path}:{number}: a second line for {key} (line "
                        f"{first_lines[key]} is used)"
                    )
            except UnicodeDecodeError as error:
                key = raw.split(maxsplit=1)[0].decode("utf-8", errors="replace")
                problem = f"{path}:{number}: {not_utf8(raw, error)}"
            if problem is not None:
                if left_out is None:
                    raise InputError(problem)
                left_out.setdefault(key, problem)
                continue
            entries[key] = parts[1] if len(parts) > 1 else ""
            first_lines[key] = number
    return entries


def not_utf8(line: bytes, error: UnicodeDecodeError) -> str:
    """What is wrong with a line that is not UTF-8, and where."""
    return f"not UTF-8 (byte 0x{line[error.start]:02x} at column {error.start + 1})"


def write_kaldi_map(path: Path, entries: Dict[str, str]) -> None:
    """Sorted ``<key> <value>`` lines; values are put on one line (newlines become spaces).
    The file appears whole or not at all (`atomic_open`)."""
    with atomic_open(path) as f:
        for key in sorted(entries):
            f.write(f"{key} {' '.join(entries[key].split())}\n")


def read_audio(entry: str) -> Tuple[np.ndarray, int]:
    """One ``wav.scp`` value → (samples, rate); samples are float (frames,) or (frames, ch)."""
    if entry.endswith("|"):
        result = subprocess.run(entry[:-1], shell=True, capture_output=True)
        if result.returncode != 0:
            error = result.stderr.decode(errors="replace").strip().splitlines()
            raise OSError(
                f"the command failed: {error[-1] if error else result.returncode}"
            )
        samples, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32")
        return samples, rate
    if ":" in entry and not Path(entry).exists():  # Kaldi ark offset
        loaded = kaldiio.load_mat(entry)
        if not isinstance(loaded, tuple):
            raise OSError("the ark entry holds a matrix, not audio")
        rate, samples = loaded
        if samples.dtype == np.int16:
            samples = samples.astype(np.float32) / 32768
        return samples.astype(np.float32), rate
    return read_audio_file(entry)


def read_audio_file(path: str) -> Tuple[np.ndarray, int]:
    """A file's samples; `OSError` if the file is cut short (a broken copy or download)."""
    if wav_is_cut(path):
        raise OSError(
            "the file is cut short: its header declares more audio than it holds"
        )
    with soundfile.SoundFile(path) as f:
        samples = f.read(dtype="float32")
        declared, rate, format = f.frames, f.samplerate, f.format
    # FLAC's header counts its samples; a file cut between two frames decodes without error.
    if format == "FLAC" and len(samples) < declared:
        raise OSError(
            f"the file is cut short: {len(samples)} of the {declared} samples its header "
            "declares"
        )
    return samples, rate


def wav_is_cut(path: str) -> bool:
    """Whether a RIFF/WAVE file holds less than its data chunk declares: libsndfile reads such
    a file without complaint, as if the audio ended there. A WAV written to a stream declares
    no size (0 or 0xFFFFFFFF) and counts as whole."""
    size_on_disk = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(12)
        if header[:4] != b"RIFF" or header[8:] != b"WAVE":
            return False
        while len(chunk := f.read(8)) == 8:
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                return size not in (0, 0xFFFFFFFF) and f.tell() + size > size_on_disk
            f.seek(size + size % 2, os.SEEK_CUR)  # chunks are padded to even sizes
    return False


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate == target_rate:
        return samples
    waveform = torch.from_numpy(np.ascontiguousarray(samples.T))
    return torchaudio.functional.resample(waveform, rate, target_rate).numpy().T


# How far a segment may end past its recording's end (a rounding of the corpus' times) and be
# cut there, as Kaldi's extract-segments allows by default (--max-overshoot 0.5).
MAX_OVERSHOOT = 0.5


class Segment(NamedTuple):
    """A line of Kaldi's ``segments``: an end of -1 is the recording's end; without a
    channel, all the recording's channels are read (and downmixed)."""

    recording: str
    start: float
    end: float
    channel: Optional[int]


def cut_segment(
    utt_id: str, samples: np.ndarray, rate: int, segment: Segment
) -> np.ndarray:
    """The samples of `segment`; `InputError` for one that is empty, past the recording's
    end or of a channel it does not have."""
    duration = len(samples) / rate
    start, end = segment.start, duration if segment.end == -1 else segment.end
    if end <= start:
        raise InputError(f"{utt_id}: the segment {start:g}-{end:g} s is empty")
    if start >= duration or end > duration + MAX_OVERSHOOT:
        raise InputError(
            f"{utt_id}: the segment {start:g}-{end:g} s ends past the end of its "
            f"recording ({duration:.2f} s)"
        )
    samples = samples[int(start * rate) : int(end * rate)]
    if segment.channel is None:
        return samples
    channels = samples.shape[1] if samples.ndim == 2 else 1
    if not 0 <= segment.channel < channels:
        raise InputError(
            f"{utt_id}: the segment's channel {segment.channel} is not one of its "
            f"recording's {channels} (counted from 0)"
        )
    return samples[:, segment.channel] if samples.ndim == 2 else samples


class DataDir:
    """The audio and text of a Kaldi data dir, read one utterance at a time.

    `left_out` maps each utterance whose line in ``wav.scp``, ``segments`` or a text file
    read with `text` could not be read (not UTF-8, not ``<recording> <start> <end>``) to the
    reason; the utterance fails with it. `repeated` maps each id of those files that has a
    second line (ignored: the first is used) to the reason.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not (self.path / "wav.scp").is_file():
            raise FileNotFoundError(f"{self.path}: no wav.scp")
        self.left_out: Dict[str, str] = {}
        self.repeated: Dict[str, str] = {}
        self.recordings = self._read_map(self.path / "wav.scp")
        self.segments: Optional[Dict[str, Segment]] = None
        # With segments, a wav.scp line names a recording: its segments fail with its reason.
        self.unreadable_recordings: Dict[str, str] = {}
        if (self.path / "segments").is_file():
            self.unreadable_recordings, self.left_out = self.left_out, {}
            self.segments = self._read_segments(self.path / "segments")
        self._last_recording: Optional[Tuple[str, np.ndarray, int]] = None

    def _read_map(self, path: Path) -> Dict[str, str]:
        """`read_kaldi_map`, with the lines it left out in `left_out` or `repeated`."""
        problems: Dict[str, str] = {}
        entries = read_kaldi_map(path, problems)
        for key, reason in problems.items():
            (self.repeated if key in entries else self.left_out).setdefault(key, reason)
        return entries

    def _read_segments(self, path: Path) -> Dict[str, Segment]:
        """``<utt> <recording> <start> <end> [<channel>]`` lines, as Kaldi has them."""
        segments = {}
        for utt_id, value in self._read_map(path).items():
            fields = value.split()
            try:
                if len(fields) not in (3, 4):
                    raise ValueError
                channel = int(fields[3]) if len(fields) == 4 else None
                start, end = float(fields[1]), float(fields[2])
                segments[utt_id] = Segment(fields[0], start, end, channel)
            except ValueError:
                self.left_out.setdefault(
                    utt_id,
                    f"{path}: '{value}' is not '<recording> <start> <end> [<channel>]'",
                )
        return segments

    @property
    def utt_ids(self) -> List[str]:
        return list(self.segments if self.segments is not None else self.recordings)

    def text(self, name: str = "text") -> Dict[str, str]:
        """A text file keyed by utterance; its lines left out are added to `left_out` and
        `repeated`."""
        return self._read_map(self.path / name)

    def speakers(self) -> Dict[str, str]:
        """``utt2spk``; empty without one (common in chat test sets): each utterance is
        then its own speaker (`speaker_maps`)."""
        return self.text("utt2spk") if (self.path / "utt2spk").is_file() else {}

    def num_samples(self) -> Optional[Dict[str, int]]:
        """``utt2num_samples`` if present (ESPnet's dumps have it): lets callers sort by length."""
        path = self.path / "utt2num_samples"
        if not path.is_file():
            return None
        return {key: int(value) for key, value in read_kaldi_map(path).items()}

    def speech(self, utt_id: str, rate: int) -> np.ndarray:
        """Mono float32 samples at `rate`; `InputError` naming the utterance if unusable."""
        segment = None
        recording = utt_id
        if self.segments is not None:
            if utt_id not in self.segments:
                raise InputError(self._missing(utt_id, "not in segments"))
            segment = self.segments[utt_id]
            recording = segment.recording
        entry = self.recordings.get(recording)
        if entry is None:
            if recording == utt_id:
                raise InputError(self._missing(utt_id, "not in wav.scp"))
            why = self.unreadable_recordings.get(
                recording, f"recording {recording} is not in wav.scp"
            )
            raise InputError(f"{utt_id}: {why}")
        try:
            samples, source_rate = self._read_recording(recording, entry)
        except Exception as error:  # soundfile, kaldiio and pipes raise many kinds
            raise InputError(
                f"{utt_id}: cannot read audio '{entry}': {error}"
            ) from error
        if segment is not None:
            samples = cut_segment(utt_id, samples, source_rate, segment)
        return check_speech(utt_id, resample(samples, source_rate, rate))

    def _missing(self, utt_id: str, where: str) -> str:
        """Why `utt_id` has no line: its line was left out, or there is none."""
        return f"{utt_id}: {self.left_out.get(utt_id, where)}"

    def _read_recording(self, recording: str, entry: str) -> Tuple[np.ndarray, int]:
        """`read_audio`, keeping the last recording when there are segments.

        The segments of one recording usually come one after another, and a long recording
        (often a pipe) would otherwise be decoded again for each of its segments.
        """
        if self._last_recording is not None and self._last_recording[0] == recording:
            return self._last_recording[1], self._last_recording[2]
        samples, rate = read_audio(entry)
        if self.segments is not None:
            self._last_recording = (recording, samples, rate)
        return samples, rate

    def iter_speech(
        self, utt_ids: List[str], rate: int
    ) -> Iterator[Tuple[str, Optional[np.ndarray], Optional[str]]]:
        """(utt_id, samples, None) or (utt_id, None, reason) for each utterance."""
        for utt_id in utt_ids:
            try:
                yield utt_id, self.speech(utt_id, rate), None
            except InputError as error:
                yield utt_id, None, str(error)


def utterance_files(
    data: DataDir, utt_ids: Set[str], exclude: Set[str]
) -> Dict[str, Dict[str, str]]:
    """The files of `data` keyed by utterance (``answer``, ``utt2kind``…) but those named in
    `exclude`, by name.

    A file counts when most of its keys are utterances: a subset of a data dir may have kept
    a full ``answer`` file, while files keyed by speaker or recording do not match.
    """
    found: Dict[str, Dict[str, str]] = {}
    for path in sorted(data.path.iterdir()):
        if path.name in exclude or path.name.startswith(".") or not path.is_file():
            continue
        # Only the keys matter here; a line that is not UTF-8 is named when the file is read.
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
        keys = {line.split(maxsplit=1)[0] for line in lines if line.strip()}
        if 2 * len(keys & utt_ids) > len(keys):
            found[path.name] = data.text(path.name)
    return found


def speaker_maps(
    utt2spk: Dict[str, str], kept: List[str]
) -> Tuple[Dict[str, str], Dict[str, str]]:
    """``utt2spk`` and ``spk2utt`` of the kept utterances (`DataDir.speakers`)."""
    speakers = {utt_id: utt2spk.get(utt_id, utt_id) for utt_id in kept}
    spk2utt: Dict[str, List[str]] = {}
    for utt_id in kept:
        spk2utt.setdefault(speakers[utt_id], []).append(utt_id)
    return speakers, {spk: " ".join(utts) for spk, utts in spk2utt.items()}
