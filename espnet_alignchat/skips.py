"""What a run leaves out, and why: each utterance (or line) named once, in the log and in a file.

Every entry point that reads a data set reports bad input the same way: one warning
``<id>: <reason> (skipped)`` in the log, one ``<id> <reason>`` line in a Kaldi-style file beside
its outputs, and the count in its summary line. The rest of the set is processed.
"""

import logging
from pathlib import Path
from typing import Dict, Optional

from espnet_alignchat.datadir import write_kaldi_map


class SkipList:
    """The ids left out by a run, with the first reason given for each."""

    def __init__(self, told: Optional[Dict[str, str]] = None) -> None:
        """`told`: ids already reported (in the log) by another list: listed, not logged."""
        self.reasons: Dict[str, str] = dict(told or {})

    def add(self, key: str, reason: str) -> None:
        """Report `key` (an utterance id, or ``file:line``) as left out, unless it is already."""
        if key in self.reasons:
            return
        reason = " ".join(reason.split())
        self.reasons[key] = reason
        logging.warning(f"{key}: {reason} (skipped)")

    def add_message(self, key: str, message: object) -> None:
        """`add` with a message that starts with the key, as an `InputError`'s does."""
        self.add(key, str(message).removeprefix(f"{key}: "))

    def add_all(self, reasons: Dict[str, str]) -> None:
        """`add` each of `reasons` (e.g. the lines a reader left out, `DataDir.left_out`)."""
        for key, reason in reasons.items():
            self.add(key, reason)

    def __contains__(self, key: str) -> bool:
        return key in self.reasons

    def __len__(self) -> int:
        return len(self.reasons)

    def write(self, path: Path) -> None:
        """The list as ``<id> <reason>`` lines; written also when empty, so that a rerun's
        file never lists what an earlier run skipped."""
        write_kaldi_map(path, self.reasons)

    def summary(self, path: Path) -> str:
        """``"; 3 skipped (listed in <path>)"``, or nothing when none were."""
        return f"; {len(self)} skipped (listed in {path})" if self.reasons else ""
