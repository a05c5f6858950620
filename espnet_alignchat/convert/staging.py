"""Where a conversion writes: a hidden sibling directory, renamed to the output at the very end.

A conversion takes tens of seconds and writes hundreds of megabytes; a process killed half-way
must not leave behind a directory that looks like a model. So every file is written into
``.<name>.partial-<host>-<pid>-<random>`` next to the output, a record of what was converted
(``conversion.json``) is written last, and the directory is renamed in one step. An output
directory that exists therefore holds a complete conversion; ``conversion.json`` says of what.
"""

import glob
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

RECORD = "conversion.json"


class ConversionError(ValueError):
    """A source model cannot be converted; the message names the file and what is wrong."""


def sha256_of(paths: Sequence[Path]) -> str:
    """One digest of the sources' bytes: identifies what an output was converted from."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as stream:
            while chunk := stream.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def read_record(out_dir: Path) -> Optional[Dict[str, Any]]:
    """The record of a complete conversion in `out_dir`, or None if there is none."""
    try:
        record = json.loads((Path(out_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    files = record.get("files", [])
    return record if all((Path(out_dir) / name).is_file() for name in files) else None


def _partial_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}.partial-{socket.gethostname()}-"


def _remove_stale_partials(out_dir: Path) -> None:
    """Delete the partial directories that conversions on this host left when killed."""
    prefix = _partial_prefix(out_dir)
    for partial in out_dir.parent.glob(f"{glob.escape(prefix)}*"):
        try:
            os.kill(int(partial.name[len(prefix) :].split("-")[0]), 0)
        except ProcessLookupError:
            logging.info(f"Removing {partial}, left by an interrupted conversion")
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError):
            pass  # not a name we wrote, or a live process of another user


def check_free(out_dir: Path) -> None:
    """A conversion never overwrites anything: `out_dir` must not exist or be empty.

    Converters call this before their slow part, and `staged_dir` again.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConversionError(f"{out_dir}: exists and is not empty; remove it first")


@contextmanager
def staged_dir(out_dir: Path, record: Dict[str, Any]) -> Iterator[Path]:
    """Yield an empty directory to write into; on success it becomes `out_dir`.

    `record` (what was converted) is completed with the list of files and written last.
    """
    out_dir = Path(out_dir)
    check_free(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out_dir)
    partial = out_dir.with_name(
        f"{_partial_prefix(out_dir)}{os.getpid()}-{secrets.token_hex(4)}"
    )
    partial.mkdir()
    try:
        yield partial
        files = sorted(path.name for path in partial.iterdir() if path.is_file())
        # Libraries that write through private temporary files leave them 0600.
        umask = os.umask(0o022)
        os.umask(umask)
        for name in files:
            os.chmod(partial / name, 0o666 & ~umask)
        record = {**record, "files": files}
        (partial / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        try:  # rename(2) is atomic and replaces an empty directory, never a full one
            os.rename(partial, out_dir)
        except OSError as error:
            raise ConversionError(f"{out_dir}: cannot be written ({error.strerror})")
    finally:
        shutil.rmtree(partial, ignore_errors=True)
