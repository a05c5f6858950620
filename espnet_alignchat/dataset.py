"""Training data as a corpus holds it, and training that survives a broken utterance.

`AlignChatDataset` reads ``sound`` and ``text`` data itself instead of ESPnet's loaders:
``wav.scp`` entries may be paths, pipes or ark offsets at any sample rate (brought to the
model's) and with any number of channels (downmixed by the preprocessor), and text files are
read as `datadir.read_kaldi_map` reads them (CRLF, a byte-order mark; a line that is not
UTF-8 or repeats an id is left out and named). Other data types (``text_int``, ``npy``...)
are ESPnet's.

ESPnet's loaders raise on an unreadable file and the preprocessor on unusable content (NaN
samples, an empty transcript); either would end a whole training run. `SkippingDataset`
reports such an utterance (a warning naming it and the reason, and a line in a file beside
the checkpoints) and lets the next loadable utterance of the set take its place in the batch.
Batches keep their size, so ESPnet's batch sampler (built from the shape files) needs no
change and DDP ranks stay in step. ``--collect_stats`` goes over `LoadableUtterances`, so the
shape files it writes list only what can be loaded.
"""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np
import torch
from espnet2.train.dataset import AbsDataset, ESPnetDataset

from espnet_alignchat.datadir import read_audio, read_kaldi_map, resample
from espnet_alignchat.errors import InputError

Example = Tuple[str, Dict[str, np.ndarray]]


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


class SoundLoader(Mapping):
    """``wav.scp`` as utterance → float32 samples at `rate`, (samples,) or (samples,
    channels); an entry that cannot be read raises `InputError` naming the utterance."""

    def __init__(self, entries: Dict[str, str], rate: int):
        self.entries = entries
        self.rate = rate

    def __getitem__(self, uid: str) -> np.ndarray:
        entry = self.entries[uid]
        try:
            samples, rate = read_audio(entry)
        except Exception as error:  # soundfile, kaldiio and pipes raise many kinds
            raise InputError(f"{uid}: cannot read audio '{entry}': {error}") from error
        return resample(samples, rate, self.rate)

    def __contains__(self, uid: object) -> bool:  # Mapping's would read the audio
        return uid in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


class AlignChatDataset(AbsDataset):
    """ESPnet's map-style dataset (``uid -> (uid, {name: array})``) with AlignChat's readers
    of ``sound`` and ``text`` data; the utterances are the first file's.

    `problems` names each id that a file's reader left out (with the file and line) or that
    is in a later file but not in the first.
    """

    def __init__(
        self,
        path_name_type_list: List[Tuple[str, str, str]],
        rate: int,
        preprocess: Optional[Callable[[str, Dict], Dict]] = None,
        float_dtype: str = "float32",
        int_dtype: str = "long",
    ):
        self.preprocess = preprocess
        self.float_dtype, self.int_dtype = float_dtype, int_dtype
        self.problems: Dict[str, str] = {}
        self.loaders: Dict[str, Tuple[str, Mapping]] = {}
        others = []
        for path, name, kind in path_name_type_list:
            if kind == "sound":
                sound = SoundLoader(read_kaldi_map(Path(path), self.problems), rate)
                self.loaders[name] = (path, sound)
            elif kind == "text":
                self.loaders[name] = (path, read_kaldi_map(Path(path), self.problems))
            else:
                others.append((path, name, kind))
        self.others = (
            ESPnetDataset(others, float_dtype=float_dtype, int_dtype=int_dtype)
            if others
            else None
        )
        if self.loaders:
            first_path, first = next(iter(self.loaders.values()))
            for path, loader in self.loaders.values():
                for key in set(loader) - set(first) - set(self.problems):
                    self.problems[key] = f"in {path}, not in {first_path}"

    def keys(self) -> List[str]:
        if self.loaders:
            return list(next(iter(self.loaders.values()))[1])
        return list(next(iter(self.others.loader_dict.values())))

    def has_name(self, name) -> bool:
        return name in self.names()

    def names(self) -> Tuple[str, ...]:
        others = self.others.names() if self.others is not None else ()
        return (*self.loaders, *others)

    def __getitem__(self, uid: str) -> Example:
        data = {}
        for name, (path, loader) in self.loaders.items():
            if uid not in loader:
                raise InputError(
                    f"{uid}: {self.problems.get(uid, f'no line in {path}')}"
                )
            data[name] = loader[uid]
        if self.others is not None:
            for name, loader in self.others.loader_dict.items():
                if uid not in loader.keys():  # keys(): a reader's `in` would load it
                    path = self.others.debug_info[name][0]
                    raise InputError(f"{uid}: no line in {path}")
            data.update(self.others[uid][1])
        if self.preprocess is not None:
            data = self.preprocess(uid, data)
        for name, value in data.items():
            kind = value.dtype.kind
            data[name] = value.astype(
                self.float_dtype if kind == "f" else self.int_dtype
            )
        return uid, data


class SkippingDataset(AbsDataset):
    """An `AlignChatDataset` whose unloadable utterances are reported in `report` and
    replaced by the next loadable one (in the data's key order). The ids its readers left
    out are reported when it is made."""

    def __init__(self, dataset: AlignChatDataset, report: Path):
        self.dataset = dataset
        self.report = report
        self.keys = dataset.keys()
        self.position = {key: i for i, key in enumerate(self.keys)}
        # In this process (each DataLoader worker has one).
        self.unloadable: Set[str] = set()
        for key, reason in dataset.problems.items():
            self._tell(key, reason)

    def has_name(self, name) -> bool:
        return self.dataset.has_name(name)

    def names(self) -> Tuple[str, ...]:
        return self.dataset.names()

    def load(self, uid: str) -> Optional[Example]:
        """The utterance, or None (reported) if it cannot be loaded."""
        if uid in self.unloadable:
            return None
        try:
            return self.dataset[uid]
        except Exception as error:  # loaders and the preprocessor raise many kinds
            self.unloadable.add(uid)
            self._tell(uid, _reason(error).removeprefix(f"{uid}: "))
            return None

    def __getitem__(self, uid) -> Example:
        for key in self._candidates(uid):
            example = self.load(key)
            if example is not None:
                return example
        raise InputError(
            f"{self.report.name}: not one utterance of the set can be loaded"
        )

    def _candidates(self, uid: str) -> Iterator[str]:
        """`uid`, then every utterance of the set from the one after it on."""
        yield uid
        start = self.position.get(uid, -1) + 1
        for offset in range(len(self.keys)):
            yield self.keys[(start + offset) % len(self.keys)]

    def _tell(self, uid: str, reason: str) -> None:
        if uid in read_skipped(self.report):  # another worker or an earlier epoch told
            return
        reason = " ".join(reason.split())
        logging.warning(f"{uid}: {reason} (skipped; in {self.report})")
        with open(self.report, "a", encoding="utf-8") as f:
            f.write(f"{uid} {reason}\n")


class LoadableUtterances(torch.utils.data.IterableDataset):
    """The utterances of `keys` that `dataset` can load, in order (split among DataLoader
    workers); the others are reported by `dataset` and left out."""

    def __init__(self, dataset: SkippingDataset, keys: List[str]):
        self.dataset = dataset
        self.keys = keys

    def __iter__(self) -> Iterator[Example]:
        worker = torch.utils.data.get_worker_info()
        for index, key in enumerate(self.keys):
            if worker is not None and index % worker.num_workers != worker.id:
                continue
            example = self.dataset.load(key)
            if example is not None:
                yield example
