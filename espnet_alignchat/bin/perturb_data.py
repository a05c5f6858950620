"""Write a perturbed copy of a Kaldi data dir: the same utterances, harder to hear.

    python -m espnet_alignchat.bin.perturb_data --in_dir data/test_real \\
        --out_dir data/test_real_noise10 --perturbation noise --color pink --snr 10

One perturbation per run (`espnet_alignchat.perturb`): ``noise`` (``--color`` white, pink or
brown, at ``--snr`` dB), ``babble`` (``--talkers`` other utterances of the same set, drawn
from up to ``--babble_pool`` of them, at ``--snr`` dB), ``tempo`` and ``speed`` (``--factor``:
1.25 is 25% faster; sox), ``telephone`` (300–3,400 Hz, 8 kHz, μ-law; sox) and ``codec``
(``--codec`` mp3 or opus at ``--bitrate``; ffmpeg). Each utterance draws its random numbers
from ``--seed`` and its own id, so the output depends on neither the order nor the other
utterances (babble's talkers aside).

Writes ``--out_dir``: ``wav/<uttid>.wav`` (16-bit; 8 kHz for ``telephone``, else ``--fs``),
``wav.scp``, ``utt2spk``, ``spk2utt``, ``text`` and the other files keyed by utterance
(``answer``, ``utt2kind``…), restricted to the utterances written; ``skipped``: ``uttid
reason`` for each utterance whose audio could not be read or perturbed (each is also reported
on one line, and the others are written); ``perturbation.json``: the options that apply to
the chosen kind. Every file appears whole or not at all. Stage 2 of the recipe formats such a
dir like any test set.
"""

import argparse
import json
import logging
import sys
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import soundfile
from tqdm import tqdm

from espnet_alignchat.atomic import atomic_path, atomic_write_text
from espnet_alignchat.cli import exit_on_user_error, setup_logging
from espnet_alignchat.datadir import (
    DataDir,
    speaker_maps,
    utterance_files,
    write_kaldi_map,
)
from espnet_alignchat.errors import InputError
from espnet_alignchat.perturb import (
    CODECS,
    KINDS,
    NOISE_COLORS,
    Perturbation,
    TalkerPool,
    ToolError,
    need,
)

PROG = "perturb_data"
# Files that describe the source audio, or that tools derive from a data dir (and would be
# stale here); every other file keyed by utterance is copied.
NOT_COPIED = {
    "wav.scp",
    "segments",
    "spk2utt",
    "utt2num_samples",
    "utt2dur",
    "utt2num_frames",
    "feats.scp",
    "feats_type",
    "reco2file_and_channel",
    "reco2dur",
    "text_int",
    "response_int",
    "dropped",
    "skipped",
    "template_mismatch",
}


# What perturbation.json records: the options every run uses and those of its kind.
COMMON_OPTIONS = ("in_dir", "out_dir", "perturbation", "fs", "seed")
OPTIONS_OF_KIND = {
    "noise": ("snr", "color"),
    "babble": ("snr", "talkers", "babble_pool"),
    "tempo": ("factor",),
    "speed": ("factor",),
    "telephone": (),
    "codec": ("codec", "bitrate"),
}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--in_dir", type=Path, required=True, help="Kaldi data dir")
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--perturbation", choices=KINDS, required=True)
    parser.add_argument("--snr", type=float, default=10.0, help="dB, noise and babble")
    parser.add_argument("--color", choices=NOISE_COLORS, default="white")
    parser.add_argument(
        "--talkers", type=int, default=4, help="other utterances in the babble"
    )
    parser.add_argument(
        "--babble_pool",
        type=int,
        default=200,
        help="babble's talkers come from this many utterances of the set (read once)",
    )
    parser.add_argument(
        "--factor", type=float, default=1.25, help="tempo and speed: >1 is faster"
    )
    parser.add_argument("--codec", choices=CODECS, default="opus")
    parser.add_argument("--bitrate", default="12k", help="the codec's bit rate")
    parser.add_argument(
        "--fs", type=int, default=16000, help="sample rate the audio is read at"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log_level", default="INFO")
    return parser


def utterance_rng(seed: int, utt_id: str) -> np.random.Generator:
    """The generator of one utterance: from the seed and its id alone."""
    return np.random.default_rng([seed, zlib.crc32(utt_id.encode())])


def talker_pool(data: DataDir, args: argparse.Namespace) -> TalkerPool:
    """Up to ``--babble_pool`` utterances of the set, drawn with the seed; unreadable ones
    are left out here (and reported when their own turn comes)."""
    utt_ids = sorted(data.utt_ids)
    rng = np.random.default_rng(args.seed)
    if len(utt_ids) > args.babble_pool:
        chosen = rng.choice(len(utt_ids), size=args.babble_pool, replace=False)
        utt_ids = [utt_ids[i] for i in sorted(chosen)]
    audio = {
        utt_id: samples
        for utt_id, samples, _ in data.iter_speech(utt_ids, args.fs)
        if samples is not None
    }
    return TalkerPool(audio, args.talkers)


def build_perturbation(data: DataDir, args: argparse.Namespace) -> Perturbation:
    if args.perturbation in ("tempo", "speed") and args.factor <= 0:
        raise InputError(f"--factor must be positive: {args.factor}")
    perturbation = Perturbation(
        args.perturbation,
        snr=args.snr,
        color=args.color,
        factor=args.factor,
        codec=args.codec,
        bitrate=args.bitrate,
    )
    for program in perturbation.programs():
        need(program)  # missing: one error before any audio is read
    if args.perturbation == "babble":
        perturbation.talkers = talker_pool(data, args)
    return perturbation


def write_utterance(path: Path, samples: np.ndarray, rate: int) -> None:
    pcm = np.clip(samples, -1.0, 1.0)
    with atomic_path(path) as partial:
        soundfile.write(partial, pcm, rate, format="WAV", subtype="PCM_16")


def perturb_data(args: argparse.Namespace) -> Tuple[int, Dict[str, str]]:
    """Write ``args.out_dir``; returns how many utterances were written and the skipped."""
    data = DataDir(args.in_dir)
    if args.out_dir.exists() and args.out_dir.resolve() == args.in_dir.resolve():
        raise InputError(f"{args.out_dir}: the output dir must differ from --in_dir")
    perturbation = build_perturbation(data, args)
    audio_dir = (args.out_dir / "wav").absolute()
    audio_dir.mkdir(parents=True, exist_ok=True)
    utt_ids = sorted(data.utt_ids)
    written: Dict[str, str] = {}
    skipped: Dict[str, str] = {}
    audio = data.iter_speech(utt_ids, args.fs)
    for utt_id, samples, error in tqdm(audio, total=len(utt_ids), unit="utt"):
        if error is None:
            try:
                perturbed, rate = perturbation(
                    utt_id, (samples, args.fs), utterance_rng(args.seed, utt_id)
                )
            except (InputError, ToolError) as failure:  # sox on this audio, say
                error = f"{utt_id}: {failure}"
        if error is not None:  # "<utt_id>: <reason>"
            skipped[utt_id] = error.split(": ", 1)[1]
            tqdm.write(f"{PROG}: {error} (skipped)", file=sys.stderr)
            continue
        path = audio_dir / f"{utt_id}.wav"
        write_utterance(path, perturbed, rate)
        written[utt_id] = str(path)
    remove_stale_audio(audio_dir, set(written))
    write_outputs(args, data, written, skipped)
    return len(written), skipped


def remove_stale_audio(audio_dir: Path, written: Set[str]) -> None:
    """Delete audio an earlier run wrote for utterances this run did not write."""
    for path in audio_dir.glob("*.wav"):
        if path.stem not in written:
            path.unlink()


def write_outputs(
    args: argparse.Namespace,
    data: DataDir,
    written: Dict[str, str],
    skipped: Dict[str, str],
) -> None:
    kept = sorted(written)
    outputs = {
        name: {utt_id: values[utt_id] for utt_id in kept if utt_id in values}
        for name, values in utterance_files(data, set(data.utt_ids), NOT_COPIED).items()
    }
    outputs["utt2spk"], outputs["spk2utt"] = speaker_maps(data.speakers(), kept)
    outputs["wav.scp"] = written
    outputs["skipped"] = skipped
    for name, values in outputs.items():
        write_kaldi_map(args.out_dir / name, values)
    recorded = COMMON_OPTIONS + OPTIONS_OF_KIND[args.perturbation]
    options = {
        key: str(value) if isinstance(value, Path) else value
        for key, value in vars(args).items()
        if key in recorded
    }
    atomic_write_text(
        args.out_dir / "perturbation.json", json.dumps(options, indent=2) + "\n"
    )


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    with exit_on_user_error(PROG):
        count, skipped = perturb_data(args)
    print(f"{args.out_dir.name}: {count:,} written, {len(skipped):,} skipped")
    if skipped:
        logging.info(f"skipped utterances are listed in {args.out_dir / 'skipped'}")
    if count == 0:
        sys.exit(f"{PROG}: error: no utterance of {args.in_dir} could be written")


if __name__ == "__main__":
    main()
