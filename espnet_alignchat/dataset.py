"""Training data that survives a broken utterance.

ESPnet's loaders raise on an unreadable file (libsndfile, kaldiio, a failing pipe), and the
preprocessor on unusable content (NaN samples, an empty transcript); either would end a whole
training run. `SkippingDataset` reports such an utterance (a warning naming it and the
reason, and a line in a file beside the checkpoints) and lets the next loadable utterance of
the set take its place in the batch. Batches keep their size, so ESPnet's batch sampler (built
from the shape files) needs no change and DDP ranks stay in step.
"""

import logging
from pathlib import Path
from typing import Dict, Set, Tuple

import numpy as np
from espnet2.train.dataset import AbsDataset, ESPnetDataset

from espnet_alignchat.errors import InputError


def _reason(error: BaseException) -> str:
    """The error's last message line (loaders wrap causes in multi-line messages); as
    `cli.one_line`, which this module cannot import (cli imports the task, the task this).
    """
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def read_skipped(report: Path) -> Dict[str, str]:
    """``uttid reason`` lines of a skip report (each utterance once)."""
    skipped: Dict[str, str] = {}
    if report.is_file():
        for line in report.read_text(encoding="utf-8").splitlines():
            key, _, reason = line.partition(" ")
            skipped.setdefault(key, reason)
    return skipped


class SkippingDataset(AbsDataset):
    """An `ESPnetDataset` whose unloadable utterances are reported in `report` and replaced
    by the next loadable one (in the data's key order)."""

    def __init__(self, dataset: ESPnetDataset, report: Path):
        self.dataset = dataset
        self.report = report
        self.keys = list(next(iter(dataset.loader_dict.values())).keys())
        self.position = {key: i for i, key in enumerate(self.keys)}
        self.unloadable: Set[str] = (
            set()
        )  # in this process (each DataLoader worker has one)

    def has_name(self, name) -> bool:
        return self.dataset.has_name(name)

    def names(self) -> Tuple[str, ...]:
        return self.dataset.names()

    def __getitem__(self, uid) -> Tuple[str, Dict[str, np.ndarray]]:
        if uid not in self.unloadable:
            try:
                return self.dataset[uid]
            except Exception as error:  # loaders and the preprocessor raise many kinds
                self._skip(uid, error)
        start = self.position[uid]
        for offset in range(1, len(self.keys)):
            key = self.keys[(start + offset) % len(self.keys)]
            if key in self.unloadable:
                continue
            try:
                return self.dataset[key]
            except Exception as error:
                self._skip(key, error)
        raise InputError(
            f"{self.report.name}: not one utterance of the set can be loaded"
        )

    def _skip(self, uid: str, error: BaseException) -> None:
        self.unloadable.add(uid)
        if uid in read_skipped(self.report):  # another worker or an earlier epoch told
            return
        reason = _reason(error)
        logging.warning(
            f"{uid}: cannot be loaded: {reason} (skipped; in {self.report})"
        )
        with open(self.report, "a", encoding="utf-8") as f:
            f.write(f"{uid} {' '.join(reason.split())}\n")
