"""Whether each input was handled, from what a user of each entry point saw: its log, its
list of what it left out, its outputs, its summary and exit status (`HANDLING` says which).
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import soundfile
import torch

from espnet_alignchat.bad_inputs.corpus import GOOD, RATE, Corpus, transcript
from espnet_alignchat.bad_inputs.kinds import (
    API,
    CHAT,
    FORMAT_DATA,
    HANDLING,
    SKIPPED,
    TRAIN,
    VOICEBENCH,
    Record,
)
from espnet_alignchat.bad_inputs.runs import Run, chat_files
from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.errors import InputError


def lines_naming(text: str, key: str) -> List[str]:
    """The lines of `text` that name `key` as a whole word (not inside a path or a longer id)."""
    pattern = re.compile(rf"(?<![\w./-]){re.escape(key)}(?![\w./-])")
    return [line.strip() for line in re.split(r"[\r\n]+", text) if pattern.search(line)]


def run_problems(
    run: Run,
    expected_status: int,
    counted: Optional[int],
    listed: Optional[Dict[str, str]],
    missing_good: List[str],
) -> List[str]:
    """What is wrong with a run as a whole: a traceback, its exit status, a summary whose
    count (`counted`, None: not found) is not the length of its list, good ones missing.
    """
    problems = []
    if "Traceback" in run.stderr + run.stdout:
        problems.append(f"{run.name} printed a traceback")
    if run.status != expected_status:
        problems.append(f"{run.name} exited with {run.status}")
    if listed is not None and counted != len(listed):
        problems.append(
            f"{run.name}'s summary counts {counted}, its list {len(listed)}"
        )
    if missing_good:
        problems.append(f"good utterances missing: {', '.join(missing_good)}")
    return problems


@dataclass
class Seen:
    """What an entry point showed of one input: the lines of its log that name it, whether
    its list of what it left out names it (None: it keeps no list), its output (None: not
    in the outputs), and what is wrong with that output, if anything."""

    told: List[str]
    listed: Optional[bool]
    output: Optional[str]
    wrong: Optional[str] = None


def judge(entry_point: str, kind: str, seen: Seen, problems: List[str]) -> Record:
    """The record of one input, from what was seen of it and of its run (`problems`)."""
    how = HANDLING[entry_point][kind]
    problems = list(problems)
    if how == SKIPPED:
        if len(seen.told) != 1:
            problems.append(f"{len(seen.told)} lines of the log name it")
        if seen.listed is False:
            problems.append("its list of what was left out does not name it")
        if kind == "duplicate_id":  # the later lines skipped, the first used
            if seen.output is None or seen.wrong:
                problems.append(seen.wrong or "not processed as its first line says")
        elif seen.output is not None:
            problems.append(f"in the outputs: {seen.output}")
        line = seen.told[0] if seen.told else ""
    else:
        if seen.output is None:
            problems.append("not in the outputs")
        if seen.told:
            problems.append(f"the log names it: {seen.told[0]}")
        if seen.wrong:
            problems.append(seen.wrong)
        line = seen.output or ""
    if problems:
        line = f"{line} [not handled: {'; '.join(problems)}]".strip()
    return Record(entry_point, kind, not problems, line, how)


def count(pattern: str, text: str) -> Optional[int]:
    """The number the summary line matching `pattern` gives (its first group, summed with any
    second), None without such a line."""
    found = re.search(pattern, text)
    if found is None:
        return None
    return sum(int(group) for group in found.groups() if group is not None)


def read_map(path: Path) -> Dict[str, str]:
    return read_kaldi_map(path) if path.is_file() else {}


def close(actual: float, expected: float) -> bool:
    return abs(actual - expected) <= 0.01 * expected


def judge_data_outputs(
    entry_point: str,
    run: Run,
    problems: List[str],
    listed: Dict[str, str],
    outputs: Dict[str, str],
    check: Callable[[str], Optional[str]] = lambda kind: None,
) -> List[Record]:
    """The records of an entry point that reads a Kaldi data dir: each kind's utterance id
    is its key; `outputs` maps the utterances processed to their output; `check` says what
    is wrong with a kind's output."""
    records = []
    for kind in HANDLING[entry_point]:
        if kind == "unsorted_ids":  # the whole corpus is unsorted: all good ones done
            done = all(u in outputs for u in GOOD)
            seen = Seen([], None, "every good utterance processed" if done else None)
        else:
            output = f"{kind} {outputs[kind]}".strip() if kind in outputs else None
            seen = Seen(lines_naming(run.stderr, kind), kind in listed, output)
            seen.wrong = check(kind) if output is not None else None
        records.append(judge(entry_point, kind, seen, problems))
    return records


def judge_format_data(run: Run, corpus: Corpus, work: Path) -> List[Record]:
    """From ``dropped`` and the dump: each kept utterance's text and audio (mono, 16 kHz,
    its source's duration; the stereo file's samples those of its mono original)."""
    dump = work / "dump"
    listed = read_map(dump / "dropped")
    texts, lengths = read_map(dump / "text"), read_map(dump / "utt2num_samples")
    wav = read_map(dump / "wav.scp")

    def check(kind: str) -> Optional[str]:
        if kind in ("crlf", "bom", "duplicate_id"):  # read from their first line
            if texts[kind] != transcript(kind):
                return f"its text is {texts[kind]!r}"
        seconds = int(lengths[kind]) / RATE
        info = soundfile.info(wav[kind])
        if (info.samplerate, info.channels) != (RATE, 1):
            return f"written at {info.samplerate} Hz with {info.channels} channels"
        if kind in corpus.durations and not close(seconds, corpus.durations[kind]):
            return f"{seconds:.2f} s written of {corpus.durations[kind]:.2f} s"
        if kind == "stereo":
            twin, _ = soundfile.read(corpus.audio["stereo_twin"], dtype="int16")
            written, _ = soundfile.read(wav[kind], dtype="int16")
            if not np.array_equal(written, twin):
                return "not the mean of its channels"
        return None

    counted = count(r"(\d+) dropped(?:.*; (\d+) ids with a second line)?", run.stdout)
    problems = run_problems(
        run, 0, counted, listed, [u for u in GOOD if u not in texts]
    )
    return judge_data_outputs(FORMAT_DATA, run, problems, listed, texts, check)


def judge_training(
    stats: Run, training: Run, corpus: Corpus, work: Path
) -> List[Record]:
    """The kinds are met by --collect_stats: its shape files list what training reads (each
    at 16 kHz, mono), its ``skipped_train`` what it left out; training must then run."""
    listed = read_map(work / "stats/skipped_train")
    shapes = read_map(work / "stats/train/speech_shape")

    def check(kind: str) -> Optional[str]:
        if "," in shapes[kind]:
            return f"read with shape {shapes[kind]}, not mono"
        seconds = int(shapes[kind]) / RATE
        if kind in corpus.durations and not close(seconds, corpus.durations[kind]):
            return f"{seconds:.2f} s read of {corpus.durations[kind]:.2f} s"
        return None

    counted = count(
        r"(\d+) train utterances \(or their lines\) were skipped", stats.stderr
    )
    problems = run_problems(
        stats, 0, counted, listed, [u for u in GOOD if u not in shapes]
    )
    problems += run_problems(training, 0, None, None, [])
    if not (work / "exp/1epoch.pth").is_file():
        problems.append("training wrote no checkpoint")
    return judge_data_outputs(TRAIN, stats, problems, listed, shapes, check)


def judge_listing_run(
    entry_point: str, run: Run, out_dir: Path, outputs: str
) -> List[Record]:
    """generate_responses and alignchat_inference: ``skipped`` and a Kaldi map of outputs."""
    listed = read_map(out_dir / "skipped")
    answers = read_map(out_dir / outputs)
    counted = count(r"(\d+) skipped \(listed in", run.stderr) if listed else 0
    problems = run_problems(
        run, 0, counted, listed, [u for u in GOOD if u not in answers]
    )
    return judge_data_outputs(entry_point, run, problems, listed, answers)


def judge_chat(run: Run, corpus: Corpus) -> List[Record]:
    """Each file is named by its path: an error line on stderr, or its answer on stdout."""
    files = chat_files(corpus)
    answers = {}
    for name, path in files.items():
        prefix = f"{path}: "
        answered = [line for line in run.stdout.splitlines() if line.startswith(prefix)]
        if answered:
            answers[name] = answered[0].removeprefix(prefix)
    expected = sum(how == SKIPPED for how in HANDLING[CHAT].values())
    counted = count(r"(\d+) of \d+ files could not be answered", run.stderr)
    problems = run_problems(run, 1, None, None, [u for u in GOOD if u not in answers])
    if counted != expected:
        problems.append(f"the summary counts {counted} of the {expected} refused")
    records = []
    for kind in HANDLING[CHAT]:
        path = str(files[kind])
        output = f"{path}: {answers[kind]}" if kind in answers else None
        seen = Seen(lines_naming(run.stderr, path), None, output)
        if kind == "stereo" and answers.get(kind) != answers.get("stereo_twin"):
            seen.wrong = "answered otherwise than its mono original"
        records.append(judge(CHAT, kind, seen, problems))
    return records


# The outputs of voicebench_infer (one per modality) in which a kind shows: the audio one,
# unless the kind is in the text or in the file itself.
VOICEBENCH_MODALITIES = {
    "empty_transcript": ("text",),
    "crlf": ("audio", "text"),
    "bom": ("audio", "text"),
    "not_utf8": ("audio", "text"),
}


def judge_voicebench(run: Run, corpus: Corpus, work: Path) -> List[Record]:
    """Each item is named ``items.jsonl:<line>``; its kind is its ``id`` field."""
    names = corpus.jsonl_names
    answered, listed = {}, {}
    for modality in ("audio", "text"):
        path = work / f"voicebench/alignchat-items-test-{modality}.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        answered[modality] = {json.loads(line)["id"]: line for line in lines}
        listed[modality] = read_map(path.with_name(f"{path.name}.skipped"))
    missing = [u for u in GOOD if u not in answered["audio"]]
    problems = run_problems(run, 0, None, None, missing)
    for modality in ("audio", "text"):
        file = f"alignchat-items-test-{modality}.jsonl.skipped"
        counted = count(
            rf"(\d+) skipped \(listed in \S+/{re.escape(file)}\)", run.stderr
        )
        if (counted or 0) != len(listed[modality]):
            problems.append(
                f"the {modality} summary counts {counted}, its list "
                f"{len(listed[modality])}"
            )
    records = []
    for kind, how in HANDLING[VOICEBENCH].items():
        key = names[kind]
        modalities = VOICEBENCH_MODALITIES.get(kind, ("audio",))
        outputs = [answered[m][kind] for m in modalities if kind in answered[m]]
        # Processed: in every output that reads it; skipped: in none.
        whole = how == SKIPPED or len(outputs) == len(modalities)
        output = outputs[0] if outputs and whole else None
        in_lists = all(key in listed[m] for m in modalities)
        seen = Seen(lines_naming(run.stderr, key), in_lists, output)
        records.append(judge(VOICEBENCH, kind, seen, problems))
    return records


def judge_api(corpus: Corpus, model: Path) -> List[Record]:
    """`Speech2Chat` in this process: an answer, or an `InputError` naming the file."""
    # Imported here: reading the suite's tables needs no model code.
    from espnet_alignchat.inference import Speech2Chat

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # beside the commands of `run_answering`
    try:
        chat = Speech2Chat.from_pretrained(
            model, device="cpu", generation={"max_new_tokens": 4}
        )
        outcomes = {}
        for name, path in chat_files(corpus).items():
            try:
                heard = chat.transcribe(str(path)) if "stereo" in name else None
                outcomes[name] = ("answer", chat(str(path)), heard)
            except InputError as error:
                outcomes[name] = ("error", str(error), None)
    except Exception as error:  # recorded for every kind, not raised: it is a finding
        problem = f"{type(error).__name__}: {error}"
        return [
            Record(API, kind, False, problem, how)
            for kind, how in HANDLING[API].items()
        ]
    finally:
        torch.set_num_threads(threads)
    missing = [u for u in GOOD if outcomes[u][0] != "answer"]
    problems = (
        [f"good utterances not answered: {', '.join(missing)}"] if missing else []
    )
    records = []
    for kind in HANDLING[API]:
        path = str(chat_files(corpus)[kind])
        outcome, text, heard = outcomes[kind]
        if outcome == "error":
            one_line = "\n" not in text and path in text
            seen = Seen([text] if one_line else [], None, None)
        else:
            seen = Seen([], None, f"{path}: {text}")
            if kind == "stereo" and heard != outcomes["stereo_twin"][2]:
                seen.wrong = "heard otherwise than its mono original"
        records.append(judge(API, kind, seen, problems))
    return records
