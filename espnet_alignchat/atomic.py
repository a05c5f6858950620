"""Files written whole or not at all.

A writer killed half way (a preempted job, ``kill -9``) or failing (a full disk) never leaves a
half-written file under the final name for a rerun to take as complete: the text goes to a
hidden ``.<name>.partial`` beside it, which replaces the final file only once it is complete.
"""

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO, Union


@contextmanager
def atomic_open(path: Union[str, Path]) -> Iterator[TextIO]:
    """A text file (UTF-8) that appears under `path` only when the block ends normally."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)
