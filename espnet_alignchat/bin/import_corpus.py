"""Import a Kaldi data dir of another ESPnet recipe, with its audio paths made absolute.

    python -m espnet_alignchat.bin.import_corpus \\
        --src /path/espnet/egs2/librispeech/asr1/data/train_960 --out_dir data/train_960

copies ``wav.scp``, ``text``, ``utt2spk``, ``spk2utt``, ``segments``, ``utt2num_samples`` and
``reco2file_and_channel`` (those the source has) into ``--out_dir``. ESPnet writes audio paths
relative to the recipe dir it runs in (``downloads/…``, ``dump/raw/org/…``), so the relative
paths in ``wav.scp`` are made absolute against ``--recipe_root``: plain paths, paths inside
commands (``flac -c -d -s downloads/x.flac |``) and arks before their offset
(``dump/raw/org/train/data/format.1/data_wav.ark:123``). The default recipe root is the dir
that holds the source's ``data/`` or ``dump/`` folder (``asr1``). Nothing is written into the
source recipe.
"""

import argparse
import os
import re
import shlex
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from espnet_alignchat.cli import exit_on_user_error
from espnet_alignchat.datadir import read_kaldi_map, write_kaldi_map
from espnet_alignchat.errors import InputError

PROG = "import_corpus"
COPIED = (
    "text",
    "utt2spk",
    "spk2utt",
    "segments",
    "utt2num_samples",
    "reco2file_and_channel",
)
# A Kaldi ark offset, optionally with a range: ``foo.ark:123`` or ``foo.ark:123[0:99]``.
ARK_ENTRY = re.compile(r"^(?P<ark>.+?):(?P<offset>\d+(\[[^\]]*\])?)$")
# wav.scp entry kinds, as counted in the report.
PATH, COMMAND, ARK = "plain paths", "commands", "ark offsets"
ABSOLUTE = "entries already absolute"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--src", type=Path, required=True, help="Kaldi data dir of another recipe"
    )
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument(
        "--recipe_root",
        type=Path,
        default=None,
        help="dir that relative paths in wav.scp start from "
        "(default: the parent of the source's data/ or dump/ folder)",
    )
    return parser


def default_recipe_root(src: Path) -> Optional[Path]:
    """The dir holding the nearest ``data/`` or ``dump/`` folder above `src`."""
    for parent in src.parents:
        if parent.name in ("data", "dump"):
            return parent.parent
    return None


def absolute_entry(entry: str, root: Path) -> Tuple[str, str]:
    """(the ``wav.scp`` value with its relative paths made absolute, its kind)."""
    if entry.endswith("|"):
        # Only words naming an existing file under the root are paths: options, program
        # names and formats ("-f wav") are left as they are.
        def absolute_word(match: re.Match) -> str:
            word = match.group()
            if os.path.isabs(word) or not (root / word).is_file():
                return word
            return shlex.quote(str(root / word))

        command = re.sub(r"\S+", absolute_word, entry)
        return command, COMMAND if command != entry else ABSOLUTE
    ark = ARK_ENTRY.match(entry)
    if ark is not None and not (root / entry).exists():
        if os.path.isabs(ark["ark"]):
            return entry, ABSOLUTE
        return f"{root / ark['ark']}:{ark['offset']}", ARK
    if os.path.isabs(entry):
        return entry, ABSOLUTE
    return str(root / entry), PATH


def names_relative_path(entry: str) -> bool:
    """Whether an entry may read a relative path (a command: a relative word with a ``/``)."""
    if entry.endswith("|"):
        return any(
            "/" in word and not os.path.isabs(word) and not word.startswith("-")
            for word in entry[:-1].split()
        )
    ark = ARK_ENTRY.match(entry)
    return not os.path.isabs(ark["ark"] if ark is not None else entry)


def audio_file(entry: str) -> Optional[str]:
    """The file an absolute plain or ark entry reads; None for a command."""
    if entry.endswith("|"):
        return None
    ark = ARK_ENTRY.match(entry)
    return ark["ark"] if ark is not None and not Path(entry).exists() else entry


def absolute_wav_scp(
    recordings: Dict[str, str], root: Optional[Path]
) -> Tuple[Dict[str, str], Counter]:
    """``wav.scp`` with its relative paths made absolute, and how many entries of each kind."""
    if root is None:  # the caller made sure that nothing is relative
        return dict(recordings), Counter({ABSOLUTE: len(recordings)})
    absolute: Dict[str, str] = {}
    kinds: Counter = Counter()
    for key, entry in recordings.items():
        absolute[key], kind = absolute_entry(entry, root)
        kinds[kind] += 1
    return absolute, kinds


def import_corpus(src: Path, out_dir: Path, recipe_root: Optional[Path]) -> str:
    """Copy the data dir; returns the report line."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such directory")
    if not (src / "wav.scp").is_file():
        raise InputError(f"{src} is not a Kaldi data dir: it has no wav.scp")
    if out_dir.exists() and out_dir.samefile(src):
        raise InputError(f"{out_dir}: the output dir must differ from --src")
    # abspath, not resolve(): ESPnet's paths are relative to the recipe dir as the user
    # reaches it, which may be through symlinks (a dump/ on another disk).
    src = Path(os.path.abspath(src))
    root = recipe_root or default_recipe_root(src)
    root = Path(os.path.abspath(root)) if root is not None else None
    recordings = read_kaldi_map(src / "wav.scp")
    if root is None and any(map(names_relative_path, recordings.values())):
        raise InputError(
            f"{src} is not inside the data/ or dump/ folder of a recipe, so the "
            "relative paths in its wav.scp cannot be resolved; pass --recipe_root"
        )
    wav_scp, kinds = absolute_wav_scp(recordings, root)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_kaldi_map(out_dir / "wav.scp", wav_scp)
    copied: List[str] = ["wav.scp"]
    for name in COPIED:
        if (src / name).is_file():
            shutil.copyfile(src / name, out_dir / name)
            copied.append(name)
        else:  # left by an earlier import of another source
            (out_dir / name).unlink(missing_ok=True)

    files = [audio_file(entry) for entry in wav_scp.values()]
    missing = [file for file in files if file is not None and not Path(file).exists()]
    if missing:
        print(
            f"{PROG}: warning: {len(missing):,} wav.scp entries name files that do not "
            f"exist, e.g. {missing[0]}"
            + (f" (is --recipe_root {root} right?)" if root is not None else ""),
            file=sys.stderr,
        )
    segments = src / "segments"
    utterances = len(read_kaldi_map(segments)) if segments.is_file() else len(wav_scp)
    report = (
        f"imported {utterances:,} utterances ({len(wav_scp):,} recordings) from {src} "
        f"into {out_dir}: {', '.join(copied)}"
    )
    if root is not None:
        counts = ", ".join(f"{kinds[kind]:,} {kind}" for kind in (PATH, COMMAND, ARK))
        report += f"; made absolute against {root}: {counts}"
    return report + f"; {kinds[ABSOLUTE]:,} {ABSOLUTE}"


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    with exit_on_user_error(PROG):
        print(import_corpus(args.src, args.out_dir, args.recipe_root))


if __name__ == "__main__":
    main()
