"""Files written whole or not at all.

A writer killed half way (a preempted job, ``kill -9``) or failing (a full disk) never leaves a
half-written file under the final name for a rerun to take as complete: the content goes to a
hidden ``.<name>.partial`` beside it, which replaces the final file only once it is complete.
"""

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO, Union


@contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """A temporary path for any writer to fill (e.g. an audio library); it becomes `path`
    when the block ends normally (synced to disk first), and is removed otherwise."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: Union[str, Path]) -> Iterator[TextIO]:
    """A text file (UTF-8) that appears under `path` only when the block ends normally."""
    with atomic_path(path) as partial, open(partial, "w", encoding="utf-8") as f:
        yield f


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)
