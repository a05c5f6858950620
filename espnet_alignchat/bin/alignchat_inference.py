"""Transcribe and answer a Kaldi data dir with a trained AlignChat model.

    python -m espnet_alignchat.bin.alignchat_inference --model_dir exp/instruct \\
        --data_dir dump/raw/test --output_dir exp/instruct/decode_test --batch_size 16

writes ``<output_dir>/text`` (the speech tokenizer's transcript of each utterance) and
``<output_dir>/response`` (the frozen LLM's answer to the speech), one ``uttid value`` line each;
a model that writes no transcript (``model: frame_adapter``) writes ``response`` alone.
With ``--text_input true`` the LLM answers the data dir's ``text`` instead: the text-conditioned
reference, written to ``<output_dir>/response``. Utterances that cannot be used (unreadable
audio, a segment past its recording's end, an empty or missing text with ``--text_input``, a
line that is not UTF-8; `espnet_alignchat.skips`) are reported, listed with the reason in
``<output_dir>/skipped`` and left out, as are the later lines of a repeated id (the first is
used); the others are processed, and the run fails only when none could be. An utterance in which the
speech tokenizer heard nothing (an empty transcript: the LLM answers an empty user turn) is
named in the log, and the log counts them. ``--config decode.yaml`` sets
any option from a YAML file, as ESPnet's inference configs do.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from espnet2.utils import config_argparse
from espnet2.utils.types import str2bool, str_or_none
from tqdm import tqdm

from espnet_alignchat.cli import (
    add_decoding_arguments,
    add_generation_arguments,
    decoding_options,
    exit_on_user_error,
    generation_options,
    setup_logging,
)
from espnet_alignchat.datadir import DataDir, read_kaldi_map, write_kaldi_map
from espnet_alignchat.inference import Speech2Chat
from espnet_alignchat.skips import SkipList


def get_parser() -> config_argparse.ArgumentParser:
    # ESPnet's parser adds --config (a decoding YAML whose keys are these options).
    parser = config_argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model_dir", type=Path, required=True)
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument(
        "--model_file", type=str_or_none, default=None, help="checkpoint in model_dir"
    )
    parser.add_argument(
        "--llm", type=str_or_none, default=None, help="replace the configured LLM path"
    )
    parser.add_argument("--key_file", type=Path, default=None, help="utterances to do")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--ngpu", type=int, default=0, help="0: CPU, 1: one GPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log_level", default="INFO")
    parser.add_argument(
        "--text_input",
        type=str2bool,
        default=False,
        help="answer the data dir's text instead of its speech",
    )
    add_decoding_arguments(parser)
    add_generation_arguments(parser)
    return parser


def batches(items: Sequence[str], size: int) -> Iterator[List[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def select_keys(data: DataDir, key_file: Optional[Path], skips: SkipList) -> List[str]:
    """The utterances to do: all of `data`, or those of `key_file` (one that `data` lacks
    fails when it is read, with the reason)."""
    if key_file is None:
        return data.utt_ids
    left_out: Dict[str, str] = {}
    keys = list(read_kaldi_map(key_file, left_out))
    skips.add_all(left_out)
    return keys


def answer_text(
    chat: Speech2Chat, data: DataDir, keys: List[str], batch_size: int, skips: SkipList
) -> Tuple[Dict[str, str], Dict[str, str]]:
    texts = data.text()
    skips.add_all({**data.repeated, **data.left_out})  # lines of text
    todo = []
    for key in keys:
        if key not in texts:
            skips.add(key, "no line in text")
        elif not texts[key].strip():
            skips.add(key, "the text is empty")
        else:
            todo.append(key)
    responses: Dict[str, str] = {}
    with tqdm(total=len(todo), unit="utt", desc="answering text") as progress:
        for batch in batches(todo, batch_size):
            typed = [[{"role": "user", "content": texts[k]}] for k in batch]
            responses.update(zip(batch, chat(typed)))
            progress.update(len(batch))
    return {}, responses


def answer_speech(
    chat: Speech2Chat, data: DataDir, keys: List[str], batch_size: int, skips: SkipList
) -> Tuple[Dict[str, str], Dict[str, str]]:
    lengths = data.num_samples()
    if lengths is not None:  # similar lengths in a batch: less padding
        keys = sorted(keys, key=lambda key: -lengths.get(key, 0))
    transcripts: Dict[str, str] = {}
    responses: Dict[str, str] = {}
    heard_nothing = 0
    with tqdm(total=len(keys), unit="utt", desc="answering speech") as progress:
        for batch in batches(keys, batch_size):
            loaded = []
            for key, speech, problem in data.iter_speech(batch, chat.sample_rate):
                if problem is None:
                    loaded.append((key, speech))
                else:
                    skips.add_message(key, problem)
            if loaded:
                hypotheses = chat.tokenize([speech for _, speech in loaded])
                answers = chat(hypotheses)
                for (key, _), hypothesis, answer in zip(loaded, hypotheses, answers):
                    responses[key] = answer
                    if not chat.model.transcribes:
                        continue
                    transcripts[key] = chat.llm.decode(hypothesis.token_ids)
                    if not hypothesis.token_ids:
                        logging.warning(
                            f"{key}: the speech tokenizer heard nothing; the LLM answered "
                            "an empty user turn"
                        )
                        heard_nothing += 1
            progress.update(len(batch))
    if heard_nothing:
        logging.warning(
            f"{heard_nothing} of {len(keys)} utterances got an empty transcript (empty "
            "lines in text)"
        )
    return transcripts, responses


def inference(args) -> int:
    torch.manual_seed(args.seed)
    device = "cuda" if args.ngpu > 0 else "cpu"
    chat = Speech2Chat.from_pretrained(
        args.model_dir,
        llm=args.llm,
        device=device,
        model_file=args.model_file,
        system_prompt=args.system_prompt,
        generation=generation_options(args),
        **decoding_options(args),
    )
    data = DataDir(args.data_dir)
    skips = SkipList()
    skips.add_all({**data.repeated, **data.left_out})  # lines of wav.scp or segments
    keys = select_keys(data, args.key_file, skips)
    answer = answer_text if args.text_input else answer_speech
    transcripts, responses = answer(chat, data, keys, args.batch_size, skips)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    if not args.text_input and chat.model.transcribes:
        write_kaldi_map(args.output_dir / "text", transcripts)
    write_kaldi_map(args.output_dir / "response", responses)
    skips.write(args.output_dir / "skipped")
    logging.info(
        f"{len(responses)} utterances answered in {args.output_dir}"
        + skips.summary(args.output_dir / "skipped")
    )
    return 0 if responses or not (keys or skips) else 1


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    with exit_on_user_error("alignchat_inference"):
        status = inference(args)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
