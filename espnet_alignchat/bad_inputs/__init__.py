"""Bad input everywhere it can enter: a corpus holding every kind a real one holds, each entry
point run on it as a user runs it, and for each (entry point, kind) whether it was handled.

    from espnet_alignchat.bad_inputs import markdown_table, run_suite
    records = run_suite(Path("bad_inputs"))   # builds its own LLM, audio and tiny model
    print(markdown_table(records))

Nothing is downloaded: the audio is made here with numpy (a chirp per word), the LLM is a random
one (`testing.save_random_llm`) and the model is trained by the suite's own run of
``alignchat_train``, so the suite runs on a fresh machine. The command-line entry points run as
subprocesses with their usual options; ``Speech2Chat`` is called in this process.

What "handled" means is written down per entry point and kind in `HANDLING`:

- ``processed``: the input is used as it should be. Stereo is downmixed and 8/44.1/48 kHz
  resampled (the data outputs are mono at 16 kHz with the source's duration); CRLF lines, a
  byte-order mark and unsorted ids are read as meant; two minutes of audio are processed, except
  by ``format_data``, whose ``--max_duration`` (30 s) refuses it as documented.
- ``skipped``: exactly one line of the run's log names the utterance (or file and line) with
  the reason, the list beside the outputs (``dropped``, ``skipped``, ``skipped_train``,
  ``<output>.skipped``) names it too, and it is not in the outputs. For a repeated id the later
  line is what is skipped: the utterance is processed as its first line says. ``Speech2Chat``
  keeps one answer per input, so there a bad input raises `InputError` with a one-line message
  naming the file; the chat command prints one error line naming the file.

Audio whose every sample is 0 is valid audio of a silent recording, not a broken file, so it is
processed, with two exceptions that refuse it on purpose: ``format_data``'s filter of training
sets (a transcript over no sound teaches the tokenizer to hear words in silence) and the chat
command (`session.ChatSession` refuses silence, since a person talking to it wants to know).

Every record also requires of its run: no ``Traceback`` in its output, its exit status (0 when
something was processed; the chat command 1 when a file was not answered), a summary whose
count equals the length of its list, and every good utterance in the outputs.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List

from espnet_alignchat.bad_inputs.corpus import WORDS, build_corpus
from espnet_alignchat.bad_inputs.judging import (
    judge_api,
    judge_chat,
    judge_format_data,
    judge_listing_run,
    judge_training,
    judge_voicebench,
)
from espnet_alignchat.bad_inputs.kinds import (
    CHAT,
    ENTRY_POINTS,
    GENERATE,
    HANDLING,
    INFERENCE,
    KINDS,
    PROCESSED,
    SKIPPED,
    VOICEBENCH,
    Record,
    markdown_table,
)
from espnet_alignchat.bad_inputs.runs import (
    run_answering,
    run_format_and_generate,
    run_training,
)
from espnet_alignchat.testing import save_random_llm

__all__ = [
    "ENTRY_POINTS",
    "HANDLING",
    "KINDS",
    "PROCESSED",
    "SKIPPED",
    "Record",
    "markdown_table",
    "run_suite",
]


def run_suite(work_dir: Path) -> List[Record]:
    """Build the corpus, LLM and model in `work_dir`, run every entry point on the corpus and
    return one record per (entry point, kind) of `HANDLING`. Each command's output is kept in
    ``work_dir/logs``. Two commands run at a time where they do not depend on each other.
    """
    work_dir = Path(work_dir).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    logging.info(f"bad-input suite in {work_dir}")
    llm = save_random_llm(work_dir / "llm", WORDS)
    corpus = build_corpus(work_dir / "corpus")
    with ThreadPoolExecutor(2) as pool:
        training = pool.submit(run_training, corpus, llm, work_dir)
        preparing = pool.submit(run_format_and_generate, corpus, llm, work_dir)
        (stats, train), (formatted, generated) = training.result(), preparing.result()
    model = work_dir / "exp"
    with ThreadPoolExecutor(1) as pool:
        answering = pool.submit(run_answering, corpus, model, work_dir)
        api = judge_api(corpus, model)
        runs = answering.result()
    return [
        *judge_format_data(formatted, corpus, work_dir),
        *judge_training(stats, train, corpus, work_dir),
        *judge_listing_run(GENERATE, generated, work_dir / "gen", "response"),
        *judge_listing_run(INFERENCE, runs[INFERENCE], work_dir / "decode", "response"),
        *judge_chat(runs[CHAT], corpus),
        *api,
        *judge_voicebench(runs[VOICEBENCH], corpus, work_dir),
    ]
