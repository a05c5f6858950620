"""Answer a local benchmark set and write VoiceBench's output files, batched and offline.

    python -m espnet_alignchat.bin.voicebench_infer --model alignchat.zip \\
        --jsonl voicebench/sd-qa-usa.jsonl --data sd-qa --split usa --output_dir results
    python -m espnet_alignchat.bin.voicebench_infer --model exp/train_instruct \\
        --data_dir dump/raw/test --data mini --output_dir results --modality audio

writes ``<output_dir>/<model_name>-<data>-<split>-<modality>.jsonl`` for each modality, named
and laid out as VoiceBench's ``main.py`` writes them: one line per item with its fields but the
audio, plus ``response``. VoiceBench's ``evaluate.py`` scores them as they are with ``mcq``,
``ifeval`` (after ``nltk.download("punkt")``), ``harm`` and ``bbh``; its ``qa`` and ``open``
first need its GPT judge (``api_judge.py`` adds the ``score`` they read), and ``qa``'s PEDANT
downloads a classifier. ``python -m espnet_alignchat.bin.voicebench_score`` scores the files
with no network (`espnet_alignchat.voicebench_scoring`). The ``audio`` modality answers the
speech; ``text`` gives the frozen LLM the prompt's text where the speech would go
(`AlignChatAssistant.generate_text`).

Input, read from local files only: ``--jsonl``, one JSON object per line with the text in
``prompt`` and the path of the audio (any format soundfile reads, relative to the JSONL's
folder) in ``audio`` (``--text_field``, ``--audio_field``); or ``--data_dir``, a Kaldi data dir
whose ``wav.scp`` and ``text`` become items ``{"key": <utt id>, "prompt": <text>}``. A
UTF-8 byte-order mark and CRLF line ends are read as they should be. A line that is not UTF-8
or not JSON, an item without the field a modality needs or with an empty prompt, and audio
that cannot be read are reported by file and line (or utterance), listed with the reason in
``<output file>.skipped`` beside each output file, and left out; the run fails only when no
item could be answered.
"""

import argparse
import codecs
import json
import logging
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, TextIO

import numpy as np
from espnet2.utils.types import str_or_none
from tqdm import tqdm

from espnet_alignchat.cli import exit_on_user_error, setup_logging
from espnet_alignchat.datadir import DataDir, not_utf8
from espnet_alignchat.errors import InputError
from espnet_alignchat.inference import load_speech
from espnet_alignchat.model import OUTPUT_MODES
from espnet_alignchat.skips import SkipList
from espnet_alignchat.voicebench import MAX_NEW_TOKENS, AlignChatAssistant

MODALITIES = ("audio", "text")


@dataclass
class Item:
    name: str  # file:line or utterance id, for messages
    fields: Dict[str, Any]  # what the output line keeps: everything but the audio
    speech: Optional[Callable[[int], np.ndarray]]  # samples at a rate, None: no audio


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--jsonl", type=Path, help="items, one JSON object per line")
    source.add_argument("--data_dir", type=Path, help="a Kaldi data dir")
    parser.add_argument("--model", required=True, help="a model dir or packed .zip")
    parser.add_argument("--llm", type=str_or_none, default=None)
    parser.add_argument("--device", default=None, help="default: cuda if there is one")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--model_name", default="alignchat", help="in the file names")
    parser.add_argument("--data", default=None, help="default: the input's name")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--modality", nargs="+", choices=MODALITIES, default=list(MODALITIES)
    )
    parser.add_argument("--text_field", default="prompt")
    parser.add_argument("--audio_field", default="audio")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument(
        "--output_mode",
        choices=OUTPUT_MODES,
        default="canonical",
        help="what the LLM reads (both worlds decode with canonical)",
    )
    parser.add_argument("--log_level", default="INFO")
    return parser


def read_jsonl(
    path: Path, audio_field: str, skips: Optional[SkipList] = None
) -> Iterator[Item]:
    """Items of a JSONL file, named ``<file name>:<line>``; lines that cannot be read are
    reported (in `skips`, if given) and left out."""
    skips = SkipList() if skips is None else skips
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if number == 1:
                line = line.removeprefix(codecs.BOM_UTF8)
            if not line.strip():
                continue
            name = f"{path.name}:{number}"
            try:
                fields = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as error:
                skips.add(name, not_utf8(line, error))
                continue
            except json.JSONDecodeError as error:
                skips.add(name, f"not JSON ({error})")
                continue
            if not isinstance(fields, dict):
                skips.add(name, "not a JSON object")
                continue
            audio = fields.pop(audio_field, None)
            speech = None
            if isinstance(audio, str):
                speech = partial(_speech, str(path.parent / audio), name)
            yield Item(name, fields, speech)


def _speech(path: str, name: str, rate: int) -> np.ndarray:
    try:
        return load_speech(path, rate, name)
    except InputError as error:  # name the line as well as the file
        raise InputError(f"{name}: {error}") from error


def read_data_dir(path: Path, skips: SkipList) -> Iterator[Item]:
    data = DataDir(path)
    texts = data.text() if (path / "text").is_file() else {}
    skips.add_all({**data.repeated, **data.left_out})
    for utt_id in data.utt_ids:
        fields = {"key": utt_id, "prompt": texts.get(utt_id)}
        yield Item(utt_id, fields, partial(data.speech, utt_id))


def batches(items: List[Item], size: int) -> Iterator[List[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def answer(
    assistant: AlignChatAssistant,
    items: List[Item],
    modality: str,
    args: argparse.Namespace,
    out: TextIO,
    skips: SkipList,
) -> int:
    """Write one output line per item answered; returns how many."""
    rate = assistant.chat.sample_rate
    answered = 0
    with tqdm(total=len(items), unit="item", desc=modality) as progress:
        for batch in batches(items, args.batch_size):
            inputs, done = [], []
            for item in batch:
                try:
                    if modality == "audio":
                        inputs.append(item.speech(rate))
                    else:
                        inputs.append(item.fields[args.text_field])
                    done.append(item)
                except InputError as error:
                    skips.add_message(item.name, error)
            if inputs:
                generate = (
                    assistant.generate_audio_batch
                    if modality == "audio"
                    else assistant.generate_text_batch
                )
                for item, response in zip(done, generate(inputs)):
                    record = {**item.fields, "response": response}
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                answered += len(done)
            progress.update(len(batch))
    return answered


def usable(
    items: List[Item], modality: str, text_field: str, skips: SkipList
) -> List[Item]:
    """The items that have what `modality` needs; the others are reported in `skips`."""
    kept = []
    for item in items:
        text = item.fields.get(text_field)
        if modality == "audio" and item.speech is None:
            skips.add(item.name, "no audio path")
        elif modality == "text" and not isinstance(text, str):
            skips.add(item.name, f"no text in '{text_field}'")
        elif modality == "text" and not text.strip():
            skips.add(item.name, f"the text in '{text_field}' is empty")
        else:
            kept.append(item)
    return kept


def infer(args: argparse.Namespace) -> int:
    unread = SkipList()  # what every modality misses
    if args.jsonl is not None:
        items = list(read_jsonl(args.jsonl, args.audio_field, unread))
    else:
        items = list(read_data_dir(args.data_dir, unread))
    data = args.data or (args.jsonl.stem if args.jsonl else args.data_dir.name)
    assistant = AlignChatAssistant(
        args.model,
        args.llm,
        args.device,
        args.max_new_tokens,
        output_mode=args.output_mode,
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for modality in args.modality:
        path = (
            args.output_dir / f"{args.model_name}-{data}-{args.split}-{modality}.jsonl"
        )
        skips = SkipList(told=unread.reasons)
        todo = usable(items, modality, args.text_field, skips)
        with open(path, "w", encoding="utf-8") as out:
            answered = answer(assistant, todo, modality, args, out, skips)
        skips.write(path.with_name(f"{path.name}.skipped"))
        logging.info(
            f"{path}: {answered} of {len(items) + len(unread)} items answered"
            + skips.summary(path.with_name(f"{path.name}.skipped"))
        )
        total += answered
    return 0 if total or not (items or unread) else 1


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    with exit_on_user_error("voicebench_infer"):
        status = infer(args)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
