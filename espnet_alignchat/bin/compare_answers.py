"""Paired comparison of answer files against the same reference answers.

    python -m espnet_alignchat.bin.compare_answers \\
        --reference exp/instruct/decode_real/test_real/text_input/response \\
        teacher=exp/instruct/decode_real/test_real/response \\
        on_policy=exp/instruct_onpolicy/decode_real/test_real/response

prints a Markdown table: each file's agreement with the reference (normalised exact match, as
stage 8 counts it) and, for every file after the first, the prompts only it and only the first
file answer as the reference does, with the exact two-sided sign test (McNemar's) p-value of
that split. On 200 prompts one system can lead another by a few points by chance alone: the
p-value says how often a split at least as uneven comes from two equally good systems. Every
utterance of the reference is compared; one a file lacks counts as a disagreement (and is
reported).
"""

import argparse
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

from espnet_alignchat.cli import exit_on_user_error, setup_logging
from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.errors import InputError
from espnet_alignchat.scoring import normalize, percent

PROG = "compare_answers"


def labelled_path(value: str) -> Tuple[str, Path]:
    label, sep, path = value.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {value!r}")
    return label, Path(path)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--reference",
        type=Path,
        required=True,
        help="the answers to compare with (Kaldi map: utt_id answer)",
    )
    parser.add_argument(
        "answers",
        type=labelled_path,
        nargs="+",
        metavar="LABEL=PATH",
        help="answer files; the others are compared with the first",
    )
    parser.add_argument("--log_level", default="INFO")
    return parser


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test: the chance of a split at least this uneven when each
    discordant prompt is a fair coin."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def agreeing(
    reference: Dict[str, str], answers: Dict[str, str], path: Path
) -> Set[str]:
    """The utterances whose answer equals the reference's after normalisation."""
    extra = [utt_id for utt_id in answers if utt_id not in reference]
    if extra:
        raise InputError(f"{path}: utterance {extra[0]} is not in the reference")
    missing = [utt_id for utt_id in reference if utt_id not in answers]
    if missing:
        logging.warning(
            f"{path}: {len(missing)} of {len(reference)} utterances have no answer "
            f"(first: {missing[0]}); they count as disagreeing"
        )
    return {
        utt_id
        for utt_id, text in reference.items()
        if utt_id in answers and normalize(answers[utt_id]) == normalize(text)
    }


def compare(
    reference: Dict[str, str], systems: Sequence[Tuple[str, Set[str]]]
) -> List[str]:
    """The Markdown table of `systems` (label, agreeing utterances), the first the baseline."""
    base_label, base = systems[0]
    lines = [
        f"| answers | agree % | only these agree | only {base_label} agrees | p (sign test) |",
        "|---|---|---|---|---|",
    ]
    for index, (label, hits) in enumerate(systems):
        cells = [label, f"{percent(len(hits), len(reference)):.1f}"]
        if index == 0:
            cells += ["", "", ""]
        else:
            wins, losses = len(hits - base), len(base - hits)
            cells += [str(wins), str(losses), f"{sign_test_p(wins, losses):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def read_answers(path: Path) -> Dict[str, str]:
    if not path.is_file():
        raise InputError(f"{path}: no such answer file")
    return read_kaldi_map(path)


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    with exit_on_user_error(PROG):
        reference = read_answers(args.reference)
        if not reference:
            raise InputError(f"{args.reference}: no answers")
        systems = [
            (label, agreeing(reference, read_answers(path), path))
            for label, path in args.answers
        ]
    print(f"{len(reference)} prompts, answers against {args.reference}")
    print("\n".join(compare(reference, systems)))


if __name__ == "__main__":
    main()
