"""Self-generation: the frozen LLM answers the text form of every training utterance.

    python -m espnet_alignchat.bin.generate_responses --llm <hub id|dir> \\
        --data_dir dump/raw/train --output_dir dump/raw/train/generate/1 \\
        [--key_file dump/raw/train/generate/keys.1.scp] [--ngpu 1] [--batch_size 32]

The transcript (wrapped in ``--user_template``, e.g. ``"Continue this text: {speech}"`` for a
plain ASR corpus) goes into the LLM's chat template exactly where stage 2 puts the speech, and
the LLM answers greedily unless told to sample. The answers are the stage-2 targets:
``<output_dir>/response_int`` holds the LLM's own token ids, including the stop token that
ended the answer (so an empty answer is still a line), ``<output_dir>/response`` the text, one
``uttid value`` line each, and ``token_ids.json`` which tokenizer made the ids; ids that
``format_data`` made in ``--data_dir`` with another LLM's tokenizer are refused.

An instruction that is empty, whose line is not UTF-8, or that the key file lists but the data
dir lacks is reported, listed with the reason in ``<output_dir>/skipped`` and left out (as is
a second line for an id: the first is used); the run fails only when nothing could be
answered.

Resumable: every answer is appended to ``<output_dir>/responses.jsonl`` as soon as its batch is
done; a rerun skips what is there, so a killed run continues without answering an utterance
twice or losing one.
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from espnet_alignchat.atomic import atomic_write_text
from espnet_alignchat.cli import (
    add_generation_arguments,
    exit_on_user_error,
    generation_options,
    setup_logging,
)
from espnet_alignchat.datadir import read_kaldi_map, write_kaldi_map
from espnet_alignchat.llm import DTYPES, SPEECH_PLACEHOLDER, FrozenLLM
from espnet_alignchat.provenance import check_record, write_record
from espnet_alignchat.skips import SkipList

LOG = "responses.jsonl"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--llm", required=True, help="hub id or local model dir")
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--key_file", type=Path, default=None, help="utterances to do")
    parser.add_argument("--text_name", default="text", help="file of the instructions")
    parser.add_argument("--user_template", default=SPEECH_PLACEHOLDER)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--ngpu", type=int, default=0, help="0: CPU, 1: one GPU")
    parser.add_argument("--llm_dtype", default="auto", choices=["auto", *DTYPES])
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log_level", default="INFO")
    add_generation_arguments(parser)
    return parser


def read_done(log: Path) -> Dict[str, dict]:
    """Answers already written; a last line cut off by a kill is dropped from the file."""
    done: Dict[str, dict] = {}
    if not log.is_file():
        return done
    lines = log.read_text(encoding="utf-8").split("\n")
    complete, tail = lines[:-1], lines[-1]  # text after the last newline was cut off
    for line in complete:
        record = json.loads(line)
        done[record["utt"]] = record
    if tail:
        logging.warning(f"{log}: dropping a partly written last line")
        atomic_write_text(log, "".join(line + "\n" for line in complete))
    return done


def select_instructions(
    path: Path, key_file: Optional[Path], skips: SkipList
) -> Tuple[Dict[str, str], List[str]]:
    """The instructions of `path` and the keys to answer (those of `key_file`, if given);
    the ids that cannot be answered are reported in `skips`."""
    left_out: Dict[str, str] = {}
    instructions = read_kaldi_map(path, left_out)
    skips.add_all(left_out)
    keys = list(instructions)
    if key_file is not None:
        keys = list(read_kaldi_map(key_file, left_out))
        skips.add_all(left_out)
    todo = []
    for key in keys:
        if key not in instructions:
            skips.add(key, f"no line in {path}")
        elif not instructions[key].strip():
            skips.add(key, "the text is empty")
        else:
            todo.append(key)
    return instructions, todo


def generate(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    skips = SkipList()
    instructions, keys = select_instructions(
        args.data_dir / args.text_name, args.key_file, skips
    )

    args.output_dir.mkdir(parents=True, exist_ok=True)
    log = args.output_dir / LOG
    done = read_done(log)
    todo = [key for key in keys if key not in done]
    # Similar prompt lengths in a batch: less left padding.
    todo.sort(key=lambda key: len(instructions[key]), reverse=True)
    logging.info(f"{len(done)} answers already written, {len(todo)} to generate")

    llm = FrozenLLM(args.llm, args.llm_dtype, args.trust_remote_code)
    # The answers' ids join the data dir's: the same tokenizer must have made both.
    check_record(args.data_dir, args.llm, llm.tokenizer)
    llm.to("cuda" if args.ngpu > 0 else "cpu")
    layout = llm.prompt_layout(args.system_prompt, args.user_template)
    options = generation_options(args)
    with (
        open(log, "a", encoding="utf-8") as out,
        tqdm(total=len(todo), unit="utt", desc="self-generation") as progress,
    ):
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            prompts = [
                [layout.prefix, llm.tokenize(instructions[key]), layout.suffix]
                for key in batch
            ]
            answers = llm.generate_ids(llm.build_inputs(prompts), **options)
            for key, ids in zip(batch, answers):
                record = {"utt": key, "ids": ids, "text": llm.decode(ids)}
                done[key] = record
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            progress.update(len(batch))

    finished = {key: done[key] for key in keys}
    write_kaldi_map(
        args.output_dir / "response", {k: r["text"] for k, r in finished.items()}
    )
    write_kaldi_map(
        args.output_dir / "response_int",
        {k: " ".join(map(str, r["ids"])) for k, r in finished.items()},
    )
    write_record(args.output_dir, args.llm, llm.tokenizer, ["response_int"])
    skips.write(args.output_dir / "skipped")
    stops = set(llm.stop_token_ids)
    cut = sum(not r["ids"] or r["ids"][-1] not in stops for r in finished.values())
    logging.info(
        f"{len(finished)} answers in {args.output_dir}"
        + skips.summary(args.output_dir / "skipped")
    )
    if cut:
        logging.warning(
            f"{cut} answers reached --max_new_tokens {args.max_new_tokens} before the LLM "
            "ended them; stage 2 will teach the speech tokenizer to stop there too"
        )
    return 0 if finished or not skips else 1


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    with exit_on_user_error("generate_responses"):
        status = generate(args)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
