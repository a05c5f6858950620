"""Kaldi data directories: reading ``wav.scp`` (with ``segments``), ``text`` and friends.

Every utterance is read on its own, so one unreadable file is reported and skipped by the caller
instead of stopping a whole set. ``wav.scp`` entries may be a path in any format soundfile reads,
a Kaldi ark offset (``foo.ark:123``) or a command ending in ``|`` whose output is audio.
"""

import io
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import kaldiio
import numpy as np
import soundfile
import torch
import torchaudio

from espnet_alignchat.atomic import atomic_open
from espnet_alignchat.errors import InputError
from espnet_alignchat.preprocessor import check_speech


def read_kaldi_map(path: Path) -> Dict[str, str]:
    """``<key> <value>`` lines → dict, in file order; an empty value is allowed."""
    entries: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.strip().split(maxsplit=1)
            if not parts:
                continue
            key = parts[0]
            if key in entries:
                raise InputError(f"{path}:{number}: duplicate key {key}")
            entries[key] = parts[1] if len(parts) > 1 else ""
    return entries


def write_kaldi_map(path: Path, entries: Dict[str, str]) -> None:
    """Sorted ``<key> <value>`` lines; values are put on one line (newlines become spaces).
    The file appears whole or not at all (`atomic_open`)."""
    with atomic_open(path) as f:
        for key in sorted(entries):
            f.write(f"{key} {' '.join(entries[key].split())}\n")


def utterance_files(
    in_dir: Path, utt_ids: Set[str], exclude: Set[str]
) -> Dict[str, Dict[str, str]]:
    """The files of `in_dir` keyed by utterance (``answer``, ``utt2kind``…) but those named in
    `exclude`, by name.

    A file counts when most of its keys are utterances: a subset of a data dir may have kept
    a full ``answer`` file, while files keyed by speaker or recording do not match.
    """
    found: Dict[str, Dict[str, str]] = {}
    for path in sorted(in_dir.iterdir()):
        if path.name in exclude or path.name.startswith(".") or not path.is_file():
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:  # binary, so not a Kaldi text file
            continue
        keys = {line.split(maxsplit=1)[0] for line in lines if line.strip()}
        if 2 * len(keys & utt_ids) > len(keys):
            found[path.name] = read_kaldi_map(path)
    return found


def speaker_maps(
    in_dir: Path, kept: List[str]
) -> Tuple[Dict[str, str], Dict[str, str]]:
    """``utt2spk`` and ``spk2utt`` of the kept utterances."""
    path = in_dir / "utt2spk"
    # Without speakers (common in chat test sets) each utterance is its own speaker.
    utt2spk = read_kaldi_map(path) if path.is_file() else {}
    speakers = {utt_id: utt2spk.get(utt_id, utt_id) for utt_id in kept}
    spk2utt: Dict[str, List[str]] = {}
    for utt_id in kept:
        spk2utt.setdefault(speakers[utt_id], []).append(utt_id)
    return speakers, {spk: " ".join(utts) for spk, utts in spk2utt.items()}


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
    samples, rate = soundfile.read(entry, dtype="float32")
    return samples, rate


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate == target_rate:
        return samples
    waveform = torch.from_numpy(np.ascontiguousarray(samples.T))
    return torchaudio.functional.resample(waveform, rate, target_rate).numpy().T


class DataDir:
    """The audio and text of a Kaldi data dir, read one utterance at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not (self.path / "wav.scp").is_file():
            raise FileNotFoundError(f"{self.path}: no wav.scp")
        self.recordings = read_kaldi_map(self.path / "wav.scp")
        self.segments: Optional[Dict[str, Tuple[str, float, float]]] = None
        if (self.path / "segments").is_file():
            self.segments = {}
            for utt_id, value in read_kaldi_map(self.path / "segments").items():
                recording, start, end = value.split()
                self.segments[utt_id] = (recording, float(start), float(end))
        self._last_recording: Optional[Tuple[str, np.ndarray, int]] = None

    @property
    def utt_ids(self) -> List[str]:
        return list(self.segments if self.segments is not None else self.recordings)

    def text(self, name: str = "text") -> Dict[str, str]:
        return read_kaldi_map(self.path / name)

    def num_samples(self) -> Optional[Dict[str, int]]:
        """``utt2num_samples`` if present (ESPnet's dumps have it): lets callers sort by length."""
        path = self.path / "utt2num_samples"
        if not path.is_file():
            return None
        return {key: int(value) for key, value in read_kaldi_map(path).items()}

    def speech(self, utt_id: str, rate: int) -> np.ndarray:
        """Mono float32 samples at `rate`; `InputError` naming the utterance if unusable."""
        start = end = None
        recording = utt_id
        if self.segments is not None:
            recording, start, end = self.segments[utt_id]
        entry = self.recordings.get(recording)
        if entry is None:
            raise InputError(f"{utt_id}: recording {recording} is not in wav.scp")
        try:
            samples, source_rate = self._read_recording(recording, entry)
        except Exception as error:  # soundfile, kaldiio and pipes raise many kinds
            raise InputError(
                f"{utt_id}: cannot read audio '{entry}': {error}"
            ) from error
        if start is not None:
            samples = samples[int(start * source_rate) : int(end * source_rate)]
        return check_speech(utt_id, resample(samples, source_rate, rate))

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
