"""Perturbations of test audio: what a speech tokenizer finds hard, made from a clean set.

Each perturbation maps one utterance's samples (mono float, at a rate) to new samples and
their rate, with a random generator for whatever it draws, so a seed fixes the output:

- ``noise``: generated noise (white, pink or brown) added at a signal-to-noise ratio;
- ``babble``: other utterances of the same set, summed, added at a signal-to-noise ratio;
- ``tempo``: faster or slower speech at the same pitch (sox ``tempo``);
- ``speed``: faster or slower speech and pitch together (sox ``speed``);
- ``telephone``: a narrowband telephone channel: 300–3,400 Hz, 8 kHz, G.711 μ-law (sox);
- ``codec``: a lossy codec at a low bit rate (ffmpeg: MP3 or Opus), decoded again.

The SNR is over the whole utterance, pauses included (as ``torchaudio.functional.add_noise``
measures it): ``10 log10(mean(speech²) / mean(noise²))``.
"""

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile

from espnet_alignchat.errors import InputError

KINDS = ("noise", "babble", "tempo", "speed", "telephone", "codec")
# Exponent k of the noise's power spectrum, 1/f^k.
NOISE_COLORS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
# ffmpeg's encoder and container for each codec.
CODECS = {"mp3": ("libmp3lame", "mp3"), "opus": ("libopus", "ogg")}
TELEPHONE_RATE = 8000
TELEPHONE_BAND = "300-3400"  # Hz: the voice channel of ITU-T G.712
# A mixture louder than this is scaled down as a whole (the SNR is kept): 16-bit audio
# clips at 1.0.
PEAK = 0.99

Audio = Tuple[np.ndarray, int]


class ToolError(OSError):
    """A program a perturbation needs (sox, ffmpeg) is missing or failed."""


def power(samples: np.ndarray) -> float:
    return float(np.mean(np.square(samples, dtype=np.float64)))


def colored_noise(length: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as 1/f^k (white 0, pink 1, brown 2)."""
    white = rng.standard_normal(length)
    exponent = NOISE_COLORS[color]
    if exponent == 0 or length < 2:
        return white
    frequencies = np.fft.rfftfreq(length)
    frequencies[0] = frequencies[1]  # the DC bin gets the lowest frequency's weight
    spectrum = np.fft.rfft(white) / frequencies ** (exponent / 2)
    return np.fft.irfft(spectrum, n=length)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`speech` plus `noise` scaled to `snr_db` below it; scaled down together if the sum
    would clip."""
    noise_power = power(noise)
    if noise_power == 0:
        raise ValueError("the noise is silent")
    gain = np.sqrt(power(speech) / (noise_power * 10 ** (snr_db / 10)))
    mixed = speech + gain * noise
    peak = float(np.abs(mixed).max())
    return mixed * (PEAK / peak) if peak > PEAK else mixed


def babble(
    length: int, talkers: Sequence[np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """The sum of `talkers` at equal power, each from a random point, looped to `length`."""
    total = np.zeros(length)
    for talker in talkers:
        start = int(rng.integers(len(talker)))
        looped = np.resize(np.roll(talker, -start), length)  # np.resize repeats it
        if power(looped) > 0:
            total += looped / np.sqrt(power(looped))
    if not total.any():
        raise InputError("its babble is silent: every talker drawn for it is")
    return total


def need(program: str) -> str:
    """The path of `program`, or `ToolError` saying how to get it."""
    path = shutil.which(program)
    if path is None:
        raise ToolError(f"{program} is not on the PATH (apt-get install {program})")
    return path


def _run(command: List[str]) -> None:
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        error = result.stderr.decode(errors="replace").strip().splitlines()
        detail = error[-1] if error else f"exit status {result.returncode}"
        raise ToolError(f"{Path(command[0]).name} failed: {detail}")


def sox(audio: Audio, effects: List[str], output_options: Sequence[str] = ()) -> Audio:
    """`audio` through sox's `effects`; `output_options` set the output file's format.

    Through files, not pipes: sox cannot write a WAV header's length to a pipe. ``-D``: no
    dither, whose random numbers would differ between runs.
    """
    samples, rate = audio
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        soundfile.write(source, samples, rate, subtype="FLOAT")
        _run([need("sox"), "-D", str(source), *output_options, str(target), *effects])
        return soundfile.read(target, dtype="float32")


def ffmpeg_codec(audio: Audio, codec: str, bitrate: str) -> Audio:
    """`audio` encoded with `codec` at `bitrate` (e.g. ``16k``) and decoded at its rate."""
    samples, rate = audio
    encoder, container = CODECS[codec]
    quiet = [need("ffmpeg"), "-nostdin", "-loglevel", "error", "-y"]
    with tempfile.TemporaryDirectory() as tmp:
        source, coded = Path(tmp) / "in.wav", Path(tmp) / f"coded.{container}"
        decoded = Path(tmp) / "out.wav"
        soundfile.write(source, samples, rate, subtype="FLOAT")
        _run(
            [*quiet, "-i", str(source), "-c:a", encoder, "-b:a", bitrate]
            + ["-bitexact", str(coded)]
        )
        _run([*quiet, "-i", str(coded), "-ar", str(rate), "-ac", "1", str(decoded)])
        return soundfile.read(decoded, dtype="float32")


@dataclass
class Perturbation:
    """One perturbation and its settings, applied utterance by utterance.

    `talkers` (babble only) draws the other talkers for an utterance: it is given the
    utterance's id and the generator, and must never return the utterance itself.
    """

    kind: str
    snr: float = 10.0
    color: str = "white"
    factor: float = 1.0
    codec: str = "opus"
    bitrate: str = "12k"
    talkers: Optional[Callable[[str, np.random.Generator], List[np.ndarray]]] = None

    def programs(self) -> List[str]:
        """The programs it runs (checked before any audio is read)."""
        if self.kind in ("tempo", "speed", "telephone"):
            return ["sox"]
        return ["ffmpeg"] if self.kind == "codec" else []

    def __call__(self, utt_id: str, audio: Audio, rng: np.random.Generator) -> Audio:
        samples, rate = audio
        if self.kind == "noise":
            noise = colored_noise(len(samples), self.color, rng)
            return mix_at_snr(samples, noise, self.snr), rate
        if self.kind == "babble":
            noise = babble(len(samples), self.talkers(utt_id, rng), rng)
            return mix_at_snr(samples, noise, self.snr), rate
        if self.kind == "tempo":
            # -s: tuned for speech
            return sox(audio, ["tempo", "-s", f"{self.factor:g}"])
        if self.kind == "speed":
            # speed plays faster at a higher rate; rate brings it back to the original
            return sox(audio, ["speed", f"{self.factor:g}", "rate", str(rate)])
        if self.kind == "telephone":
            return sox(
                audio,
                ["sinc", TELEPHONE_BAND, "rate", str(TELEPHONE_RATE)],
                ["-e", "u-law", "-b", "8"],
            )
        if self.kind == "codec":
            return ffmpeg_codec(audio, self.codec, self.bitrate)
        raise ValueError(f"unknown perturbation {self.kind}")


class TalkerPool:
    """Babble's talkers: `count` utterances drawn from `audio` (utterance id → samples) for
    each utterance, never the utterance itself."""

    def __init__(self, audio: Dict[str, np.ndarray], count: int):
        if len(audio) < count + 1:
            raise InputError(
                f"babble of {count} talkers needs at least {count + 1} readable "
                f"utterances, the set has {len(audio)}"
            )
        self.audio = audio
        self.count = count
        self.ids = sorted(audio)

    def __call__(self, utt_id: str, rng: np.random.Generator) -> List[np.ndarray]:
        others = [other for other in self.ids if other != utt_id]
        chosen = rng.choice(len(others), size=self.count, replace=False)
        return [self.audio[others[i]] for i in sorted(chosen)]
