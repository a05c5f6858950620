"""Score VoiceBench output files offline, by the rules of `espnet_alignchat.voicebench_scoring`.

    python -m espnet_alignchat.bin.voicebench_score --evaluator harm \\
        --src_file alignchat-advbench-test-audio.jsonl
    python -m espnet_alignchat.bin.voicebench_score --evaluator open \\
        --src_file alignchat-alpacaeval-test-audio.jsonl \\
        --text_file alignchat-alpacaeval-test-text.jsonl

reads the files VoiceBench's ``main.py`` (or ``voicebench_infer``, ``voicebench_main``,
``voicebench_suite``) writes, one JSON object per line with ``response``, and prints the scores
as JSON. The evaluators are named as in VoiceBench's ``evaluate.py``:
  harm    refusal rate (VoiceBench's phrases)
  mcq     accuracy and unparsed share (needs ``reference``, a letter)
  ifeval  strict/loose prompt/instruction accuracy and their mean (needs ``key``,
          ``instruction_id_list``, ``kwargs``, ``prompt``), with Google's checker
  qa      an accepted answer inside the response (``answers`` or ``reference``): offline,
          where VoiceBench's ``qa`` needs its GPT judge's ``score`` and PEDANT's download
  open    chrF and exact agreement with the answers in ``--text_file`` (the same items
          answered from text), where VoiceBench's ``open`` needs its GPT judge
Lines that are not JSON objects with a ``response`` are reported by line and left out.
"""

import argparse
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

from espnet_alignchat.bin.voicebench_infer import read_jsonl
from espnet_alignchat.cli import exit_on_user_error, setup_logging
from espnet_alignchat.errors import InputError
from espnet_alignchat.voicebench_scoring import (
    IFEvalChecker,
    mcq_scores,
    open_scores,
    qa_scores,
    refusal_rate,
)

PROG = "voicebench_score"
EVALUATORS = ("harm", "mcq", "ifeval", "qa", "open")
NEEDS = {  # evaluator -> fields each line must have besides "response"
    "harm": (),
    "mcq": ("reference",),
    "ifeval": ("key", "prompt", "instruction_id_list", "kwargs"),
    "qa": (),
    "open": (),
}


def read_records(path: Path, needed: tuple) -> List[Dict]:
    """The lines of a VoiceBench output file that have a response and `needed`."""
    records = []
    for item in read_jsonl(path, "audio"):  # bad lines are logged there
        missing = [k for k in ("response", *needed) if k not in item.fields]
        if missing:
            logging.warning(f"{item.name}: no {', '.join(missing)} (skipped)")
            continue
        records.append(item.fields)
    if not records:
        raise InputError(f"{path}: no line to score")
    return records


def accepted_answers(record: Dict, where: str) -> List[str]:
    answers = record.get("answers") or record.get("reference")
    if isinstance(answers, str):
        return [answers]
    if not answers:
        raise InputError(f"{where}: a qa line needs 'answers' or 'reference'")
    return [str(a) for a in answers]


def score(args: argparse.Namespace) -> Dict[str, float]:
    records = read_records(args.src_file, NEEDS[args.evaluator])
    responses = [str(r["response"]) for r in records]
    if args.evaluator == "harm":
        return dict(refusal_rate=refusal_rate(responses))
    if args.evaluator == "mcq":
        return mcq_scores(responses, [str(r["reference"]).strip() for r in records])
    if args.evaluator == "ifeval":
        return IFEvalChecker(args.ifeval_checker).score(records, responses)
    if args.evaluator == "qa":
        answers = [accepted_answers(r, str(args.src_file)) for r in records]
        return dict(contains_answer=qa_scores(responses, answers))
    if args.text_file is None:
        raise InputError("--evaluator open needs --text_file (the text answers)")
    texts = read_records(args.text_file, ())
    by_prompt = {r.get("prompt"): str(r["response"]) for r in texts}
    missing = [r.get("prompt") for r in records if r.get("prompt") not in by_prompt]
    if missing:
        raise InputError(
            f"{args.text_file}: no text answer for {len(missing)} prompts of "
            f"{args.src_file} (first: {missing[0]!r})"
        )
    return open_scores(responses, [by_prompt[r.get("prompt")] for r in records])


def main(cmd: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--src_file", type=Path, required=True)
    parser.add_argument("--evaluator", choices=EVALUATORS, required=True)
    parser.add_argument("--text_file", type=Path, default=None, help="for open")
    parser.add_argument(
        "--ifeval_checker", type=Path, default=None, help="default: the installed one"
    )
    parser.add_argument("--log_level", default="INFO")
    args = parser.parse_args(cmd)
    setup_logging(args.log_level)
    with exit_on_user_error(PROG):
        scores = score(args)
    print(json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()
