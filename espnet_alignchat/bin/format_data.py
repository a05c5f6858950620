"""Format a Kaldi data dir for training: one audio file per utterance, transcripts as LLM ids.

    python -m espnet_alignchat.bin.format_data --in_dir data/train --out_dir dump/raw/train \\
        --llm meta-llama/Llama-3.1-8B-Instruct --fs 16000 --audio_format flac --nj 4

reads ``--in_dir`` (``wav.scp`` with paths, pipes or ark offsets, optional ``segments``, ``text``,
``utt2spk`` and any other file keyed by utterance, such as ``answer``, ``response`` or
``utt2kind``) and writes to ``--out_dir``:

- ``data/<uttid>.flac`` (or ``.wav``): each kept utterance, mono, 16-bit, at ``--fs``;
- ``wav.scp`` (absolute paths), ``utt2num_samples``, ``text``, ``utt2spk``, ``spk2utt`` and the
  other per-utterance files, restricted to the kept utterances;
- ``text_int`` (and ``response_int`` when there is a ``response``): the LLM tokenizer's ids
  (``add_special_tokens=False``) in ESPnet's ``text_int`` format, ``uttid 12 7 301``;
- ``token_ids.json``: which tokenizer made the ids (`espnet_alignchat.provenance`), checked
  by training and self-generation;
- ``dropped``: ``uttid reason: detail`` for each utterance left out;
- ``template_mismatch``, only if there is any: the transcripts whose prompt (the chat
  template's pieces around the transcript's own tokens, as training and the text-conditioned
  answers build it) differs from what the LLM's ``apply_chat_template`` makes of the same
  message, with both token sequences (see `FrozenLLM.template_mismatch`).

An utterance whose audio cannot be used (unreadable, empty, non-finite, multi-channel) is
reported on one line and dropped, never fatal. With ``--filter true`` (training and validation
sets) so are utterances shorter than ``--min_duration`` or longer than ``--max_duration``
seconds, and those whose transcript is missing, empty or longer than ``--max_tokens`` tokens.
Only the LLM's tokenizer and config are loaded. The output depends on the input and the options, not on
``--nj``; a rerun replaces it.
"""

import argparse
import logging
import multiprocessing
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import numpy as np
import soundfile
import torch
from espnet2.utils.types import str2bool, str_or_none
from tqdm import tqdm

from espnet_alignchat.cli import exit_on_user_error, setup_logging
from espnet_alignchat.datadir import (
    DataDir,
    speaker_maps,
    utterance_files,
    write_kaldi_map,
)
from espnet_alignchat.errors import InputError
from espnet_alignchat.llm import SPEECH_PLACEHOLDER, FrozenLLM
from espnet_alignchat.provenance import RECORD, write_record

PROG = "format_data"
AUDIO_FORMATS = ("flac", "wav")
# Text files turned into token ids, and the name of the ids file each gets.
TOKENIZED = {"text": "text_int", "response": "response_int"}
# Files that this tool writes itself, or that describe the source audio rather than the
# formatted one; every other file keyed by utterance is copied.
NOT_COPIED = {
    "wav.scp",
    "segments",
    "text",
    "utt2spk",
    "spk2utt",
    "utt2num_samples",
    "text_int",
    "response_int",
    RECORD,
    "dropped",
    "template_mismatch",
    "reco2file_and_channel",
    "reco2dur",
    "utt2dur",
    "feats.scp",
    "utt2num_frames",
    "feats_type",
}

# Why an utterance is dropped: how its line in `dropped` starts, and the summary's words.
UNUSABLE_AUDIO = "unusable audio"
TOO_SHORT = "too short"
TOO_LONG = "too long"
MISSING_TEXT = "missing transcript"
EMPTY_TEXT = "empty transcript"
TOO_MANY_TOKENS = "too many tokens"

Drop = Tuple[str, str]  # (reason, detail or "")
Outcome = Tuple[str, Optional[int], Optional[Drop]]  # (utt_id, num_samples, drop)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--in_dir", type=Path, required=True, help="Kaldi data dir")
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument(
        "--llm", required=True, help="hub id or dir of the LLM whose tokenizer to use"
    )
    parser.add_argument("--trust_remote_code", type=str2bool, default=False)
    parser.add_argument(
        "--user_template",
        default=SPEECH_PLACEHOLDER,
        help="the user turn around the transcript, to check the chat template's cut",
    )
    parser.add_argument("--system_prompt", type=str_or_none, default=None)
    parser.add_argument("--fs", type=int, default=16000, help="output sample rate")
    parser.add_argument("--audio_format", choices=AUDIO_FORMATS, default="flac")
    parser.add_argument("--min_duration", type=float, default=0.1, help="seconds")
    parser.add_argument("--max_duration", type=float, default=30.0, help="seconds")
    parser.add_argument(
        "--max_tokens", type=int, default=256, help="most LLM tokens per transcript"
    )
    parser.add_argument("--nj", type=int, default=4, help="worker processes")
    parser.add_argument(
        "--filter",
        type=str2bool,
        default=True,
        help="drop utterances by duration and transcript (unusable audio is always dropped)",
    )
    parser.add_argument("--log_level", default="INFO")
    return parser


@dataclass
class AudioWriter:
    """Reads, checks and writes the audio of utterances; runs in the worker processes."""

    data: DataDir
    audio_dir: Path
    fs: int
    audio_format: str
    duration_range: Optional[Tuple[float, float]]  # None: any duration is kept

    def path(self, utt_id: str) -> Path:
        return self.audio_dir / f"{utt_id}.{self.audio_format}"

    def __call__(self, utt_ids: List[str]) -> List[Outcome]:
        return [self.write(utt_id) for utt_id in utt_ids]

    def write(self, utt_id: str) -> Outcome:
        try:
            speech = self.data.speech(utt_id, self.fs)
        except InputError as error:  # its message starts with the utterance id
            return utt_id, None, (UNUSABLE_AUDIO, str(error).split(": ", 1)[-1])
        duration = len(speech) / self.fs
        if self.duration_range is not None:
            shortest, longest = self.duration_range
            if duration < shortest:
                return utt_id, None, (TOO_SHORT, f"{duration:.2f} s < {shortest} s")
            if duration > longest:
                return utt_id, None, (TOO_LONG, f"{duration:.2f} s > {longest} s")
        # Scaling by 2^15, as soundfile does when it reads 16-bit audio, makes a 16-bit
        # source at the target rate round-trip exactly; resampling may overshoot ±1.
        pcm = np.clip(np.round(speech * 32768), -32768, 32767).astype(np.int16)
        soundfile.write(
            self.path(utt_id),
            pcm,
            self.fs,
            format=self.audio_format.upper(),
            subtype="PCM_16",
        )
        return utt_id, len(pcm), None


_worker_writer: Optional[AudioWriter] = None


def _start_worker(writer: AudioWriter) -> None:
    global _worker_writer
    _worker_writer = writer
    # nj processes share the cores; one torch thread each avoids oversubscribing them.
    torch.set_num_threads(1)


def _run_worker(utt_ids: List[str]) -> List[Outcome]:
    return _worker_writer(utt_ids)


def recording_groups(data: DataDir, utt_ids: List[str]) -> List[List[str]]:
    """The utterances grouped by recording, so one worker reads each recording once."""
    if data.segments is None:
        return [[utt_id] for utt_id in utt_ids]
    groups: Dict[str, List[str]] = {}
    for utt_id in utt_ids:
        groups.setdefault(data.segments[utt_id][0], []).append(utt_id)
    return list(groups.values())


def run_groups(
    writer: AudioWriter, groups: List[List[str]], nj: int
) -> Iterator[List[Outcome]]:
    """`writer`'s outcomes for each group, in order, from `nj` processes."""
    if nj == 1:
        yield from map(writer, groups)
        return
    with multiprocessing.Pool(nj, _start_worker, (writer,)) as pool:
        yield from pool.imap(_run_worker, groups, chunksize=8)


def write_audio(
    writer: AudioWriter, utt_ids: List[str], nj: int, name: str
) -> List[Outcome]:
    """Write the audio of `utt_ids`; each utterance with unusable audio is reported."""
    outcomes: List[Outcome] = []
    with tqdm(total=len(utt_ids), unit="utt", desc=name) as progress:
        for group in run_groups(writer, recording_groups(writer.data, utt_ids), nj):
            for utt_id, _, drop in group:
                if drop is not None and drop[0] == UNUSABLE_AUDIO:
                    tqdm.write(
                        f"{PROG}: {utt_id}: {drop[1]} (dropped)", file=sys.stderr
                    )
            outcomes.extend(group)
            progress.update(len(group))
    return outcomes


def tokenize(tokenizer, texts: Dict[str, str]) -> Dict[str, List[int]]:
    # One string at a time: a batch call would start the tokenizer's thread pool before
    # the audio workers are forked.
    return {
        key: tokenizer(text, add_special_tokens=False)["input_ids"]
        for key, text in texts.items()
    }


def template_mismatches(
    llm: FrozenLLM, texts: Dict[str, str], system: Optional[str], user_template: str
) -> Dict[str, str]:
    """``uttid -> "ours: ... | template: ..."`` for each text whose prompt tokens differ."""
    found = {}
    for utt_id, text in texts.items():
        mismatch = llm.template_mismatch(text, system, user_template)
        if mismatch is not None:
            ours, theirs = mismatch
            found[utt_id] = f"ours: {' '.join(ours)} | template: {' '.join(theirs)}"
    return found


def check_text(
    utt_id: str, texts: Dict[str, str], ids: Dict[str, List[int]], max_tokens: int
) -> Optional[Drop]:
    if utt_id not in texts:
        return MISSING_TEXT, "no line in text"
    if not texts[utt_id]:
        return EMPTY_TEXT, ""
    if len(ids[utt_id]) > max_tokens:
        return TOO_MANY_TOKENS, f"{len(ids[utt_id])} > {max_tokens}"
    return None


def summary(name: str, kept: int, dropped: Dict[str, Drop]) -> str:
    """``train: 3,412 kept, 17 dropped (too long: 12, unusable audio: 3, …)``."""
    counts = Counter(reason for reason, _ in dropped.values())
    reasons = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    text = f"{name}: {kept:,} kept, {len(dropped):,} dropped"
    if reasons:
        text += " (" + ", ".join(f"{r}: {n:,}" for r, n in reasons) + ")"
    return text


def remove_stale_audio(audio_dir: Path, kept: Set[str]) -> None:
    """Delete audio files an earlier run wrote for utterances this run does not keep."""
    for path in audio_dir.iterdir():
        if path.suffix[1:] in AUDIO_FORMATS and path.name not in kept:
            path.unlink()


def format_data(args: argparse.Namespace) -> Tuple[str, int]:
    """Write ``args.out_dir``; returns the summary line and the number of kept utterances."""
    data = DataDir(args.in_dir)
    if not (args.in_dir / "text").is_file():
        raise FileNotFoundError(f"{args.in_dir}: no text")
    out_dir = args.out_dir.absolute()
    if out_dir.exists() and out_dir.samefile(args.in_dir):
        raise InputError(f"{args.out_dir}: the output dir must differ from --in_dir")
    utt_ids = sorted(data.utt_ids)
    # Written text is whitespace-normalized, so its ids are those of the normalized text.
    texts = {key: " ".join(value.split()) for key, value in data.text().items()}
    extras = utterance_files(args.in_dir, set(utt_ids), NOT_COPIED)
    llm = FrozenLLM(args.llm, trust_remote_code=args.trust_remote_code)
    tokenizer = llm.tokenizer
    token_ids = {"text": tokenize(tokenizer, texts)}
    if "response" in extras:
        responses = {k: " ".join(v.split()) for k, v in extras["response"].items()}
        token_ids["response"] = tokenize(tokenizer, responses)

    dropped: Dict[str, Drop] = {}
    if args.filter:
        for utt_id in utt_ids:
            drop = check_text(utt_id, texts, token_ids["text"], args.max_tokens)
            if drop is not None:
                dropped[utt_id] = drop
    audio_dir = out_dir / "data"
    audio_dir.mkdir(parents=True, exist_ok=True)
    writer = AudioWriter(
        data,
        audio_dir,
        args.fs,
        args.audio_format,
        (args.min_duration, args.max_duration) if args.filter else None,
    )
    outcomes = write_audio(
        writer,
        [utt_id for utt_id in utt_ids if utt_id not in dropped],
        args.nj,
        args.out_dir.name,
    )
    num_samples = {}
    for utt_id, samples, drop in outcomes:
        if drop is None:
            num_samples[utt_id] = samples
        else:
            dropped[utt_id] = drop
    kept = sorted(num_samples)
    remove_stale_audio(audio_dir, {writer.path(utt_id).name for utt_id in kept})

    kept_texts = {utt_id: texts[utt_id] for utt_id in kept if texts.get(utt_id)}
    mismatches = template_mismatches(
        llm, kept_texts, args.system_prompt, args.user_template
    )
    if mismatches:
        first = next(iter(mismatches.items()))
        logging.warning(
            f"{len(mismatches)} of {len(kept_texts)} transcripts are tokenized "
            f"differently inside {args.llm}'s chat template than on their own (first: "
            f"{first[0]}: {first[1]}); listed in {args.out_dir / 'template_mismatch'}"
        )
    else:
        logging.info(
            f"all {len(kept_texts)} transcripts are tokenized inside the chat template "
            "as on their own"
        )
    utt2spk, spk2utt = speaker_maps(args.in_dir, kept)
    outputs = {
        "wav.scp": {utt_id: str(writer.path(utt_id)) for utt_id in kept},
        "utt2num_samples": {utt_id: str(num_samples[utt_id]) for utt_id in kept},
        "text": {utt_id: texts[utt_id] for utt_id in kept if utt_id in texts},
        "utt2spk": utt2spk,
        "spk2utt": spk2utt,
        "dropped": {
            utt_id: f"{reason}: {detail}" if detail else reason
            for utt_id, (reason, detail) in dropped.items()
        },
    }
    for name, values in extras.items():
        outputs[name] = {utt_id: values[utt_id] for utt_id in kept if utt_id in values}
    for name, ids in token_ids.items():
        # An utterance without tokens gets no line: ESPnet's text_int reader rejects it.
        outputs[TOKENIZED[name]] = {
            utt_id: " ".join(map(str, ids[utt_id]))
            for utt_id in kept
            if ids.get(utt_id)
        }
    (out_dir / "template_mismatch").unlink(missing_ok=True)
    if mismatches:
        outputs["template_mismatch"] = mismatches
    for name, values in outputs.items():
        write_kaldi_map(out_dir / name, values)
    write_record(out_dir, args.llm, tokenizer, [TOKENIZED[name] for name in token_ids])
    if extras:
        logging.info(f"copied the per-utterance files {', '.join(extras)}")
    logging.info(f"wrote {out_dir}; dropped utterances are listed in {out_dir}/dropped")
    return summary(args.out_dir.name, len(kept), dropped), len(kept)


def main(cmd: Optional[List[str]] = None) -> None:
    parser = get_parser()
    args = parser.parse_args(cmd)
    if args.nj < 1:
        parser.error("--nj must be at least 1")
    setup_logging(args.log_level)
    with exit_on_user_error(PROG):
        line, kept = format_data(args)
    print(line)
    if kept == 0:
        sys.exit(f"{PROG}: error: no utterance of {args.in_dir} was kept")


if __name__ == "__main__":
    main()
