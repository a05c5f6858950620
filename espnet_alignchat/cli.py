"""What every entry point shares: one-line errors for bad input instead of tracebacks."""

import sys
from contextlib import contextmanager
from typing import Iterator

from espnet_alignchat.llm import LLMMismatchError, PromptError
from espnet_alignchat.preprocessor import InputError

USER_ERRORS = (InputError, LLMMismatchError, PromptError, FileNotFoundError)


def one_line(error: BaseException) -> str:
    """The error's own message, also when a DataLoader worker wrapped it in a traceback."""
    last = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
    marker = f"{type(error).__name__}: "
    return last.split(marker, 1)[1] if marker in last else last


@contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """Turn errors caused by the user's data, paths or LLM into ``prog: error: …`` + exit 1."""
    try:
        yield
    except USER_ERRORS as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)
