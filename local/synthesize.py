#!/usr/bin/env python3
"""Synthesize an utterance plan with espeak-ng + sox into a Kaldi data dir.

Reads a plan written by ``local/mini_world.py`` (JSONL: utt, speaker, text, kind,
optional answer) and the voice table; writes one 16 kHz mono 16-bit wav per utterance
(espeak's silence trimmed, then 0.05-0.3 s of silence on each side and a noise floor of
-70 to -50 dBFS, drawn per utterance) under ``--audio_dir`` and a Kaldi data dir with
``wav.scp`` (absolute paths), ``text``, ``utt2spk``, ``spk2utt``, ``utt2kind`` and, for
question utterances, ``answer``.
Lines are sorted in C-locale order. An utterance whose synthesis fails is reported on
one line and left out; it is never fatal.

Example:
    python local/synthesize.py --plan /tmp/world_run/world/plan_dev.jsonl \
        --voices /tmp/world_run/world/voices.tsv --audio_dir /tmp/world_run/wav/dev \
        --data_dir /tmp/world_run/data/dev --nj 2
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

# Trim espeak's own leading/trailing silence, then give each utterance margins of its own: a
# tokenizer trained on one fixed margin drops the first word of a recording with more silence.
TRIM_SILENCE = "silence 1 0.01 0.1% reverse silence 1 0.01 0.1% reverse".split()
MARGIN_SECONDS = (0.05, 0.3)
# And a noise floor, as any microphone has: espeak's silence is exact zeros, whose log-mel
# (log 1e-10, ESPnet's floor) is far below speech and, over long margins, skews the global
# mean/variance normalization enough to slow stage 1 down markedly.
NOISE_FLOOR_DBFS = (-70.0, -50.0)


@dataclass(frozen=True)
class Conditions:
    """How one utterance is recorded: silence around it, and its noise floor."""

    lead: float  # seconds
    trail: float
    noise_dbfs: float  # RMS of white noise, dB below full scale
    seed: int


def conditions(utt: str) -> Conditions:
    """The conditions of `utt`, drawn from its id: reruns give the same audio."""
    rng = random.Random(utt)
    return Conditions(
        rng.uniform(*MARGIN_SECONDS),
        rng.uniform(*MARGIN_SECONDS),
        rng.uniform(*NOISE_FLOOR_DBFS),
        rng.getrandbits(32),
    )


def load_voices(path: Path) -> dict[str, dict[str, str]]:
    """Map speaker id to its voices.tsv row (espeak, rate, pitch, split)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"speaker", "espeak", "rate", "pitch"} - set(reader.fieldnames or [])
        if missing:
            sys.exit(f"synthesize.py: {path}: missing columns {sorted(missing)}")
        return {row["speaker"]: row for row in reader}


def load_plan(path: Path, voices: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """Read and check a plan; exits with a one-line error on bad input."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                utt, spk, text = row["utt"], row["speaker"], row["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                sys.exit(
                    f"synthesize.py: {path}:{n}: expected JSON with utt, speaker, text"
                )
            if spk not in voices:
                sys.exit(
                    f"synthesize.py: {path}:{n}: speaker {spk!r} not in the voice table"
                )
            if not utt.startswith(spk) or not text.strip():
                sys.exit(
                    f"synthesize.py: {path}:{n}: utt must start with the speaker id "
                    "and text must not be empty"
                )
            rows.append(row)
    if not rows:
        sys.exit(f"synthesize.py: {path} is empty")
    return rows


def synthesize(text: str, voice: dict[str, str], wav: Path, how: Conditions) -> None:
    """Speak ``text`` with one voice into ``wav``, recorded as ``how`` says.

    Raises RuntimeError on failure.
    """
    # Text goes through stdin so that it can never be read as an espeak option.
    speak = [
        "espeak-ng",
        "-v",
        voice["espeak"],
        "-s",
        voice["rate"],
        "-p",
        voice["pitch"],
    ]
    raw = subprocess.run(speak + ["--stdout"], input=text.encode(), capture_output=True)
    if raw.returncode != 0 or not raw.stdout:
        raise RuntimeError(f"espeak-ng: {raw.stderr.decode().strip() or 'no audio'}")
    convert = ["sox", "-t", "wav", "-", "-r", "16000", "-c", "1", "-b", "16", str(wav)]
    effects = TRIM_SILENCE + ["pad", f"{how.lead:.3f}", f"{how.trail:.3f}"]
    out = subprocess.run(convert + effects, input=raw.stdout, capture_output=True)
    if out.returncode != 0:
        raise RuntimeError(f"sox: {out.stderr.decode().strip()}")
    audio, rate = soundfile.read(str(wav), dtype="float32")
    if audio.size == 0:
        raise RuntimeError("sox: empty audio")
    rms = 10 ** (how.noise_dbfs / 20)
    audio += np.random.default_rng(how.seed).normal(0, rms, audio.shape).astype("f4")
    soundfile.write(str(wav), np.clip(audio, -1, 1), rate, subtype="PCM_16")


def write_data_dir(
    data_dir: Path, rows: list[dict[str, str]], wavs: dict[str, Path]
) -> None:
    """Write the Kaldi files for the utterances that were synthesized."""
    rows = sorted(
        (r for r in rows if r["utt"] in wavs), key=lambda r: r["utt"].encode()
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "wav.scp": [f"{r['utt']} {wavs[r['utt']]}" for r in rows],
        "text": [f"{r['utt']} {r['text']}" for r in rows],
        "utt2spk": [f"{r['utt']} {r['speaker']}" for r in rows],
        "utt2kind": [f"{r['utt']} {r.get('kind', 'sentence')}" for r in rows],
        "answer": [f"{r['utt']} {r['answer']}" for r in rows if "answer" in r],
    }
    spk2utt: dict[str, list[str]] = {}
    for r in rows:
        spk2utt.setdefault(r["speaker"], []).append(r["utt"])
    files["spk2utt"] = [f"{s} {' '.join(u)}" for s, u in sorted(spk2utt.items())]
    for name, lines in files.items():
        if name == "answer" and not lines:
            (data_dir / name).unlink(missing_ok=True)
            continue
        (data_dir / name).write_text("".join(line + "\n" for line in lines))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", type=Path, required=True, help="plan_<set>.jsonl")
    parser.add_argument("--voices", type=Path, required=True, help="voices.tsv")
    parser.add_argument("--audio_dir", type=Path, required=True, help="where wavs go")
    parser.add_argument(
        "--data_dir", type=Path, required=True, help="Kaldi dir to write"
    )
    parser.add_argument("--nj", type=int, default=2, help="parallel synthesis jobs")
    parser.add_argument(
        "--max_utts",
        type=int,
        default=0,
        help="synthesize only this many utterances, evenly spread over the plan (0: all)",
    )
    args = parser.parse_args(argv)
    for path in (args.plan, args.voices):
        if not path.is_file():
            sys.exit(f"synthesize.py: no such file: {path}")
    if args.nj < 1:
        sys.exit("synthesize.py: --nj must be >= 1")
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            sys.exit(f"synthesize.py: {tool} is not installed")

    voices = load_voices(args.voices)
    rows = load_plan(args.plan, voices)
    if 0 < args.max_utts < len(rows):  # a quick run: every voice and kind still appear
        rows = rows[:: len(rows) // args.max_utts][: args.max_utts]
    audio_dir = args.audio_dir.resolve()
    audio_dir.mkdir(parents=True, exist_ok=True)

    def job(row: dict[str, str]) -> tuple[str, Path | None]:
        wav = audio_dir / f"{row['utt']}.wav"
        try:
            synthesize(row["text"], voices[row["speaker"]], wav, conditions(row["utt"]))
        except (RuntimeError, OSError) as err:
            tqdm.write(f"synthesize.py: skipped {row['utt']}: {err}", file=sys.stderr)
            return row["utt"], None
        return row["utt"], wav

    start = time.time()
    # Threads are enough: the work happens in the espeak-ng and sox subprocesses.
    with ThreadPoolExecutor(args.nj) as pool:
        done = list(tqdm(pool.map(job, rows), total=len(rows), desc=args.data_dir.name))
    wavs = {utt: wav for utt, wav in done if wav is not None}
    if not wavs:
        sys.exit(f"synthesize.py: every utterance of {args.plan} failed")
    write_data_dir(args.data_dir, rows, wavs)
    seconds = sum(soundfile.info(str(w)).duration for w in wavs.values())
    print(
        f"{args.data_dir}: {len(wavs)} utterances ({len(rows) - len(wavs)} failed), "
        f"{seconds / 60:.1f} min of audio, synthesized in {time.time() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
