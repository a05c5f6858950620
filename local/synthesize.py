#!/usr/bin/env python3
"""Synthesize an utterance plan into a Kaldi data dir with four TTS engines + sox.

Reads a plan (JSONL: utt, speaker, text, kind, optional source and answer, as written by
``local/mini_world.py`` or ``local/real_world.py``) and the voice table; speaks each
utterance with its speaker's engine and writes one 16 kHz mono 16-bit wav per utterance
under ``--audio_dir``: the engine's silence trimmed, the speech brought to a level of -28
to -16 dBFS, 0.05-0.3 s of silence on each side, a noise floor of -70 to -50 dBFS, all
drawn per utterance from its id. Then a Kaldi data dir with ``wav.scp`` (absolute paths),
``text``, ``utt2spk``, ``spk2utt``, ``utt2kind`` and, where the plan has one, ``answer``.
Lines are sorted in C-locale order. An utterance whose synthesis fails is reported on
one line and left out; it is never fatal. At the end, each engine's utterance count and
synthesis rate (utterances per second of one job) are printed.

The voice table (``voices.tsv``) has the columns speaker, engine, voice, rate, pitch:
  espeak-ng  voice "en-us+m1"; rate in words per minute; pitch 0-99
  flite      voice kal, kal16, awb, rms or slt; rate a speed factor (1.0: the voice's
             own); pitch its mean F0 in Hz or "-"
  festival   voice kal_diphone, ked_diphone, cmu_us_slt_arctic_hts, ...; rate a speed
             factor; pitch "-"
  piper      voice a name; rate a speed factor; extra columns model (the .onnx file,
             relative to the table's folder or absolute), noise_scale, noise_w ("-":
             the model's own)
A table without an ``engine`` column (the mini world's: speaker, espeak, rate, pitch,
split) is all espeak-ng. piper voices and festival processes are started once per job
and reused, as loading them takes longer than speaking a sentence. espeak-ng, flite and
festival give the same audio on every run; piper samples noise that is not seeded.

Example:
    python local/synthesize.py --plan /tmp/world_run/world/plan_dev.jsonl \
        --voices /tmp/world_run/world/voices.tsv --audio_dir /tmp/world_run/wav/dev \
        --data_dir /tmp/world_run/data/dev --nj 2
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import random
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

# Trim the engine's own leading/trailing silence, then give each utterance margins of its
# own: a tokenizer trained on one fixed margin drops the first word of a recording with
# more silence.
TRIM_SILENCE = "silence 1 0.01 0.1% reverse silence 1 0.01 0.1% reverse".split()
MARGIN_SECONDS = (0.05, 0.3)
# And a noise floor, as any microphone has: espeak's silence is exact zeros, whose log-mel
# (log 1e-10, ESPnet's floor) is far below speech and, over long margins, skews the global
# mean/variance normalization enough to slow stage 1 down markedly.
NOISE_FLOOR_DBFS = (-70.0, -50.0)
# The engines speak at -14 to -26 dBFS; each utterance is set to a level of its own, so
# that loudness says nothing about the engine and varies a little, as recordings do.
SPEECH_LEVEL_DBFS = (-28.0, -16.0)
PEAK = 0.95
ENGINES = ("espeak-ng", "flite", "festival", "piper")
TOOLS = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival"}
FESTIVAL_TIMEOUT = 60.0  # seconds for one utterance before the process is given up
SENTENCE_PAUSE = 0.25  # seconds between the sentences piper speaks one by one


@dataclass(frozen=True)
class Conditions:
    """How one utterance is recorded: silence around it, its noise floor and level."""

    lead: float  # seconds
    trail: float
    noise_dbfs: float  # RMS of white noise, dB below full scale
    seed: int
    level_dbfs: float  # RMS of the speech between the margins


def conditions(utt: str) -> Conditions:
    """The conditions of `utt`, drawn from its id: reruns give the same audio."""
    rng = random.Random(utt)
    lead, trail = rng.uniform(*MARGIN_SECONDS), rng.uniform(*MARGIN_SECONDS)
    noise, seed = rng.uniform(*NOISE_FLOOR_DBFS), rng.getrandbits(32)
    return Conditions(lead, trail, noise, seed, rng.uniform(*SPEECH_LEVEL_DBFS))


# ---------------------------------------------------------------- the voice table


def load_voices(path: Path) -> dict[str, dict[str, str]]:
    """Map speaker id to its voices.tsv row, with ``engine`` and ``voice`` filled in."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        columns = set(reader.fieldnames or [])
        legacy = "engine" not in columns  # the mini world's table: espeak-ng only
        need = {"speaker", "rate", "pitch"} | ({"espeak"} if legacy else {"voice"})
        if need - columns:
            sys.exit(f"synthesize.py: {path}: missing columns {sorted(need - columns)}")
        voices = {}
        for n, row in enumerate(reader, 2):
            if legacy:
                row.update(engine="espeak-ng", voice=row["espeak"])
            problem = check_voice(row, path.parent)
            if problem:
                speaker = row["speaker"]
                sys.exit(f"synthesize.py: {path}:{n}: speaker {speaker}: {problem}")
            voices[row["speaker"]] = row
    return voices


def check_voice(row: dict[str, str], folder: Path) -> str | None:
    """What is wrong with one voice row (None if nothing); resolves piper's model path."""
    engine = row.get("engine")
    if engine not in ENGINES:
        return f"unknown engine {engine!r} (one of {', '.join(ENGINES)})"
    if not row.get("voice"):
        return "empty voice"
    try:
        rate = float(row.get("rate") or "")
        if row.get("pitch") not in ("-", None):
            float(row["pitch"])
    except ValueError:
        return (
            f"rate and pitch must be numbers: {row.get('rate')!r}, {row.get('pitch')!r}"
        )
    if rate <= 0:
        return "rate must be > 0"
    if engine == "espeak-ng" and row.get("pitch") == "-":
        return "espeak-ng needs a pitch (0-99)"
    if engine == "festival" and not re.fullmatch(r"\w+", row["voice"]):
        return f"not a festival voice name: {row['voice']!r}"
    if engine == "piper":  # whether the file exists is checked if the voice is used
        model = Path(row.get("model") or "-")
        row["model"] = str(model if model.is_absolute() else folder / model)
    return None


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


def missing_tools(engines: set[str]) -> list[str]:
    """The programs or Python packages that the engines in use need but cannot find."""
    missing = [] if shutil.which("sox") else ["sox"]
    for engine in sorted(engines):
        if engine == "piper" and importlib.util.find_spec("piper") is None:
            missing.append("piper (pip install piper-tts)")
        elif engine in TOOLS and shutil.which(TOOLS[engine]) is None:
            missing.append(TOOLS[engine])
    if "festival" in engines and shutil.which("stdbuf") is None:
        missing.append("stdbuf (coreutils)")
    return missing


# ---------------------------------------------------------------- the engines


def speak_espeak(text: str, voice: dict[str, str], scratch: Path) -> bytes:
    """espeak-ng's wav; the text goes through stdin so it is never read as an option."""
    speak = ["espeak-ng", "-v", voice["voice"], "-s", voice["rate"]]
    speak += ["-p", voice["pitch"], "--stdout"]
    raw = subprocess.run(speak, input=text.encode(), capture_output=True)
    if raw.returncode != 0 or not raw.stdout:
        raise RuntimeError(f"espeak-ng: {raw.stderr.decode().strip() or 'no audio'}")
    return raw.stdout


def speak_flite(text: str, voice: dict[str, str], scratch: Path) -> bytes:
    """flite's wav (it needs a file to write to); speed and mean F0 through --setf."""
    cmd = ["flite", "-voice", voice["voice"], "-f", "/dev/stdin", "-o", str(scratch)]
    cmd += ["--setf", f"duration_stretch={1 / float(voice['rate']):.4f}"]
    if voice["pitch"] != "-":
        cmd += ["--setf", f"int_f0_target_mean={voice['pitch']}"]
    out = subprocess.run(cmd, input=text.encode(), capture_output=True)
    try:
        if out.returncode != 0 or not scratch.is_file():
            raise RuntimeError(f"flite: {out.stderr.decode().strip() or 'no audio'}")
        return scratch.read_bytes()
    finally:
        scratch.unlink(missing_ok=True)


def scheme_string(text: str) -> str:
    """``text`` as a Scheme string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Festival:
    """One festival process that speaks many texts with one voice and speed.

    Starting festival and loading a voice takes 0.3-0.5 s, while a diphone voice speaks a
    sentence in 0.03 s: a process per utterance would spend most of its time starting.
    Commands go in on stdin (``--pipe``); after each, a numbered marker is printed, and
    the output up to it is that command's (stdbuf makes festival flush every line).
    """

    def __init__(self, voice: str, rate: float) -> None:
        cmd = ["stdbuf", "-oL", "festival", "--pipe"]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.count = 0
        self.buffer = b""
        self.broken = False  # it exited or stopped answering: start a new one
        hts_rate = f'(list (list "-r" {rate}))'  # HTS voices ignore Duration_Stretch
        setup = (
            f"(voice_{voice})\n"
            f"(Parameter.set 'Duration_Stretch {1 / rate:.4f})\n"
            "(if (symbol-bound? 'hts_engine_params) "
            f"(set! hts_engine_params (append hts_engine_params {hts_rate})))"
        )
        try:
            errors = [line for line in self.run(setup) if "error" in line.lower()]
        except RuntimeError:
            self.close()
            raise
        if errors:
            self.close()
            raise RuntimeError(f"festival: voice {voice}: {errors[0]}")

    def run(self, commands: str) -> list[str]:
        """Send Scheme commands; return the lines they printed."""
        self.count += 1
        marker = f'"@@done{self.count}"'
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"{commands}\n(print {marker})\n".encode())
            self.proc.stdin.flush()
        except OSError:
            self.broken = True
            raise RuntimeError("festival: the process has exited") from None
        lines = []
        deadline = time.monotonic() + FESTIVAL_TIMEOUT
        while (line := self._readline(deadline)) != marker:
            lines.append(line)
        return lines

    def _readline(self, deadline: float) -> str:
        """One line of festival's output, waiting at most until ``deadline``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                self.broken = True
                raise RuntimeError("festival: no answer in time")
            chunk = os.read(fd, 65536)
            if not chunk:
                self.broken = True
                raise RuntimeError("festival: the process has exited")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode(errors="replace").strip()

    def say(self, text: str, wav: Path) -> None:
        """Speak ``text`` into the wav file ``wav``."""
        wav.unlink(missing_ok=True)
        utt = f"(utt.synth (Utterance Text {scheme_string(text)}))"
        lines = self.run(f"(utt.save.wave {utt} {scheme_string(str(wav))} 'riff)")
        if not wav.is_file():
            raise RuntimeError(f"festival: {lines[-1] if lines else 'no audio'}")

    def close(self) -> None:
        """End the process (closing stdin ends festival's read loop)."""
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


_local = threading.local()  # per job: loaded piper voices, running festival processes
_festivals: list[Festival] = []  # every festival process, to close at the end
_festivals_lock = threading.Lock()


def speak_festival(text: str, voice: dict[str, str], scratch: Path) -> bytes:
    """festival's wav, from this job's process for the voice (started on first use)."""
    procs = _local.__dict__.setdefault("festival", {})
    key = (voice["voice"], float(voice["rate"]))
    if key not in procs:
        procs[key] = Festival(*key)
        with _festivals_lock:
            _festivals.append(procs[key])
    try:
        procs[key].say(text, scratch)
        return scratch.read_bytes()
    except RuntimeError:
        if procs[key].broken:
            procs.pop(key).close()  # the next utterance starts a new process
        raise
    finally:
        scratch.unlink(missing_ok=True)


def close_festivals() -> None:
    """End every festival process this run started."""
    with _festivals_lock:
        while _festivals:
            _festivals.pop().close()


def piper_voice(model: str) -> object:
    """This job's piper voice for ``model``, loaded on first use with one ONNX thread."""
    loaded = _local.__dict__.setdefault("piper", {})
    if model not in loaded:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        with open(f"{model}.json") as f:
            config = PiperConfig.from_dict(json.load(f))
        session = onnxruntime.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
        loaded[model] = PiperVoice(session=session, config=config)
    return loaded[model]


def speak_piper(text: str, voice: dict[str, str], scratch: Path) -> bytes:
    """piper's audio as a wav; speed through length_scale, variety through the noises."""
    from piper import SynthesisConfig

    def scale(name: str) -> float | None:
        value = voice.get(name) or "-"
        return None if value == "-" else float(value)

    config = SynthesisConfig(
        length_scale=1 / float(voice["rate"]),
        noise_scale=scale("noise_scale"),
        noise_w_scale=scale("noise_w"),
    )
    speaker = piper_voice(voice["model"])
    chunks = list(speaker.synthesize(text, config))  # type: ignore[attr-defined]
    if not chunks:
        raise RuntimeError("piper: no audio")
    rate = chunks[0].sample_rate
    pause = np.zeros(round(SENTENCE_PAUSE * rate), dtype="float32")  # piper adds none
    audio = np.concatenate(
        [x for c in chunks for x in (pause, c.audio_float_array)][1:]
    )
    out = io.BytesIO()
    soundfile.write(out, audio, rate, format="WAV", subtype="FLOAT")
    return out.getvalue()


SPEAK = {
    "espeak-ng": speak_espeak,
    "flite": speak_flite,
    "festival": speak_festival,
    "piper": speak_piper,
}


# ---------------------------------------------------------------- recording conditions


def record(raw: bytes, wav: Path, how: Conditions) -> float:
    """Trim, resample, level, pad and add noise to an engine's wav; return seconds."""
    # Float in between: the level is set after trimming, 16 bits only at the end.
    convert = ["sox", "-t", "wav", "-", "-r", "16000", "-c", "1", "-e", "float"]
    convert += ["-b", "32", str(wav)]
    effects = TRIM_SILENCE + ["pad", f"{how.lead:.3f}", f"{how.trail:.3f}"]
    out = subprocess.run(convert + effects, input=raw, capture_output=True)
    if out.returncode != 0:
        raise RuntimeError(f"sox: {out.stderr.decode().strip()}")
    audio, rate = soundfile.read(str(wav), dtype="float32")
    speech = audio[round(how.lead * rate) : len(audio) - round(how.trail * rate)]
    rms = float(np.sqrt(np.mean(np.square(speech)))) if speech.size else 0.0
    if rms < 1e-6:
        raise RuntimeError("sox: no speech left after trimming silence")
    gain = min(10 ** (how.level_dbfs / 20) / rms, PEAK / float(np.abs(speech).max()))
    noise_rms = 10 ** (how.noise_dbfs / 20)
    noise = np.random.default_rng(how.seed).normal(0, noise_rms, audio.shape)
    audio = audio * gain + noise.astype("f4")
    soundfile.write(str(wav), np.clip(audio, -1, 1), rate, subtype="PCM_16")
    return len(audio) / rate


def synthesize(text: str, voice: dict[str, str], wav: Path, how: Conditions) -> float:
    """Speak ``text`` with one voice into ``wav``, recorded as ``how`` says.

    Returns the duration in seconds; raises RuntimeError (or OSError) on failure.
    """
    scratch = wav.with_name(f"{wav.stem}.{voice['engine']}.tmp.wav")
    try:
        return record(SPEAK[voice["engine"]](text, voice, scratch), wav, how)
    except BaseException:
        wav.unlink(missing_ok=True)  # no half-made wav left behind
        raise


# ---------------------------------------------------------------- Kaldi dir and main


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


@dataclass(frozen=True)
class Outcome:
    """What became of one utterance."""

    utt: str
    engine: str
    wav: Path | None  # None: failed
    error: str
    seconds: float  # wall time spent on it (synthesis and post-processing)
    duration: float  # of the audio


def engine_report(outcomes: list[Outcome]) -> list[str]:
    """Per engine: utterances, failures, audio and rate of one job (one core)."""
    by_engine: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_engine[o.engine].append(o)
    lines = []
    for engine, items in sorted(by_engine.items()):
        done = [o for o in items if o.wav is not None]
        busy = sum(o.seconds for o in items)
        audio = sum(o.duration for o in done)
        lines.append(
            f"  {engine}: {len(done)} utterances ({len(items) - len(done)} failed), "
            f"{audio / 60:.1f} min of audio, {len(items) / max(busy, 1e-9):.1f} utt/s "
            f"per job ({audio / max(busy, 1e-9):.0f}x real time)"
        )
    return lines


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

    voices = load_voices(args.voices)
    rows = load_plan(args.plan, voices)
    if 0 < args.max_utts < len(rows):  # a quick run: every voice and kind still appear
        rows = rows[:: len(rows) // args.max_utts][: args.max_utts]
    used = {r["speaker"]: voices[r["speaker"]] for r in rows}
    missing = missing_tools({v["engine"] for v in used.values()})
    if missing:
        sys.exit(f"synthesize.py: not installed: {', '.join(missing)}")
    for spk, voice in sorted(used.items()):
        if voice["engine"] == "piper" and not Path(voice["model"]).is_file():
            sys.exit(
                f"synthesize.py: {args.voices}: {spk}: no piper model {voice['model']}"
            )
    audio_dir = args.audio_dir.resolve()
    audio_dir.mkdir(parents=True, exist_ok=True)

    def job(row: dict[str, str]) -> Outcome:
        voice = voices[row["speaker"]]
        wav = audio_dir / f"{row['utt']}.wav"
        start = time.perf_counter()
        try:
            duration = synthesize(row["text"], voice, wav, conditions(row["utt"]))
        except Exception as err:  # noqa: BLE001 - one bad utterance is never fatal
            seconds = time.perf_counter() - start
            error = str(err) if isinstance(err, RuntimeError) else repr(err)
            return Outcome(row["utt"], voice["engine"], None, error, seconds, 0.0)
        seconds = time.perf_counter() - start
        return Outcome(row["utt"], voice["engine"], wav, "", seconds, duration)

    start = time.time()
    # Threads are enough: the work happens in subprocesses and in onnxruntime, which
    # release the GIL; each thread keeps its own piper voices and festival processes.
    outcomes = []
    try:
        with ThreadPoolExecutor(args.nj) as pool:
            done = pool.map(job, rows)
            for outcome in tqdm(done, total=len(rows), desc=args.data_dir.name):
                if outcome.wav is None:
                    error = " ".join(outcome.error.split())
                    line = f"synthesize.py: skipped {outcome.utt}: {error}"
                    tqdm.write(line, file=sys.stderr)
                outcomes.append(outcome)
    finally:
        close_festivals()
    wavs = {o.utt: o.wav for o in outcomes if o.wav is not None}
    if not wavs:
        sys.exit(f"synthesize.py: every utterance of {args.plan} failed")
    write_data_dir(args.data_dir, rows, wavs)
    seconds = sum(o.duration for o in outcomes)
    print(
        f"{args.data_dir}: {len(wavs)} utterances ({len(rows) - len(wavs)} failed), "
        f"{seconds / 60:.1f} min of audio, synthesized in {time.time() - start:.1f} s"
    )
    print("\n".join(engine_report(outcomes)))


if __name__ == "__main__":
    main()
