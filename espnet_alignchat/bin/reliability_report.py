"""Run the fault suites and write their figures into RESULTS.md.

    python -m espnet_alignchat.bin.reliability_report          # from the repository's root

Two suites, each building what it needs in ``--work_dir`` (nothing is downloaded):

- ``inputs`` (`espnet_alignchat.bad_inputs`): a corpus holding every kind of bad input a real
  one holds, run through every entry point; for each (entry point, kind), whether it was
  handled as documented (processed as meant, or reported in one line and skipped);
- ``kills`` (`espnet_alignchat.kill_resume`): stages 2, 4, 5, 6 and 7 of a tiny mini-world
  recipe killed with SIGKILL at seeded random moments (``--kill_trials`` each) and rerun;
  utterances lost or duplicated, checkpoints that load, outputs equal to an uninterrupted run.

The figures replace the section between the report's two markers in ``--results`` (appended,
markers and all, the first time), and the records are saved as JSON (``--output``). The exit
status is 1 when anything was not handled or not resumed, so CI or a user sees it.
"""

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from espnet_alignchat import bad_inputs, kill_resume
from espnet_alignchat.atomic import atomic_write_text
from espnet_alignchat.cli import exit_on_user_error, setup_logging

PROG = "reliability_report"
SUITES = ("inputs", "kills")
BEGIN = "<!-- reliability_report: begin (written by espnet_alignchat.bin.reliability_report) -->"
END = "<!-- reliability_report: end -->"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--suites", nargs="+", choices=SUITES, default=list(SUITES))
    parser.add_argument(
        "--kill_trials",
        type=int,
        default=4,
        help="kills of each of the stages 2, 4, 5, 6 and 7",
    )
    parser.add_argument("--seed", type=int, default=0, help="of the kill moments")
    parser.add_argument(
        "--work_dir",
        type=Path,
        default=None,
        help="where the suites build and run (default: a temporary dir, removed)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("egs2/alignchat/RESULTS.md"),
        help="the Markdown file whose reliability section is replaced",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="the records as JSON (optional)"
    )
    parser.add_argument("--log_level", default="INFO")
    return parser


def replace_section(document: str, section: str) -> str:
    """`document` with the text between the report's markers replaced by `section` (the
    markers and `section` appended at the end if the markers are not there yet)."""
    block = f"{BEGIN}\n{section.strip()}\n{END}"
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        return document.rstrip("\n") + "\n\n" + block + "\n"
    return document[:start] + block + document[end + len(END) :]


def commit() -> str:
    """The checked-out commit, with ``+`` when the tree has changes (or ``unknown``)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"]).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def input_figures(records: List[bad_inputs.Record]) -> Tuple[str, int]:
    """The kinds × entry points table with its totals, and the count not handled."""
    failed = [r for r in records if not r.handled]
    lines = [
        f"**Bad inputs**: {len(records) - len(failed)} of {len(records)} (entry point, "
        f"kind) pairs handled; {len(bad_inputs.KINDS)} kinds, "
        f"{len(bad_inputs.ENTRY_POINTS)} entry points.",
        "",
        bad_inputs.markdown_table(records),
    ]
    lines += [f"- not handled: {r.entry_point}, {r.kind}: {r.line}" for r in failed]
    return "\n".join(lines), len(failed)


def kill_figures(
    reference: kill_resume.Reference, trials: List[kill_resume.Trial]
) -> Tuple[str, int]:
    """The per-stage table of the kills, and the count of trials that went wrong."""
    killed = [t for t in trials if t.killed]
    failed = [
        t
        for t in trials
        if not t.resumed
        or (t.lost or 0) > 0
        or (t.duplicated or 0) > 0
        or t.checkpoints_load is False
    ]
    lost = sum(t.lost or 0 for t in trials)
    duplicated = sum(t.duplicated or 0 for t in trials)
    lines = [
        f"**Kills**: {len(killed)} SIGKILLs in {len(trials)} trials; "
        f"{sum(t.resumed for t in trials)} reruns completed; {lost} utterances lost, "
        f"{duplicated} duplicated; {sum(t.equal for t in trials)} of {len(trials)} "
        "outputs equal to the uninterrupted run's.",
        "",
        kill_resume.render_markdown(reference, trials),
    ]
    lines += [
        f"- stage {t.stage} trial {t.trial} (killed at {t.kill_at_s:.1f} s): {t.note}"
        for t in trials
        if t.note
    ]
    return "\n".join(lines), len(failed)


def run(args: argparse.Namespace, work_dir: Path) -> Tuple[str, Dict[str, Any], int]:
    """Run the chosen suites in `work_dir`: the Markdown section, the records, and how many
    inputs or trials went wrong."""
    parts = [
        "## Reliability: bad input and killed runs",
        "",
        f"`python -m espnet_alignchat.bin.reliability_report --kill_trials "
        f"{args.kill_trials} --seed {args.seed}` at commit `{commit()}`, "
        f"{time.strftime('%Y-%m-%d')}.",
    ]
    records: Dict[str, Any] = {}
    failures = 0
    if "inputs" in args.suites:
        start = time.monotonic()
        found = bad_inputs.run_suite(work_dir / "bad_inputs")
        text, failed = input_figures(found)
        parts += ["", text, f"(the suite ran in {time.monotonic() - start:.0f} s)"]
        records["inputs"] = [dataclasses.asdict(r) for r in found]
        failures += failed
    if "kills" in args.suites:
        start = time.monotonic()
        reference, trials = kill_resume.run_trials(
            work_dir / "kills", args.kill_trials, args.seed
        )
        text, failed = kill_figures(reference, trials)
        parts += ["", text, f"(the suite ran in {time.monotonic() - start:.0f} s)"]
        records["kills"] = [dataclasses.asdict(t) for t in trials]
        failures += failed
    return "\n".join(parts) + "\n", records, failures


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    with exit_on_user_error(PROG):
        if not args.results.is_file():
            raise FileNotFoundError(f"{args.results}: no such file (--results)")
        if args.work_dir is None:
            with tempfile.TemporaryDirectory(prefix="reliability_") as tmp:
                section, records, failures = run(args, Path(tmp))
        else:
            section, records, failures = run(args, args.work_dir.absolute())
        atomic_write_text(
            args.results, replace_section(args.results.read_text(), section)
        )
        if args.output is not None:
            atomic_write_text(args.output, json.dumps(records, indent=1, default=str))
        print(section)
        logging.info(f"wrote the reliability section of {args.results}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
