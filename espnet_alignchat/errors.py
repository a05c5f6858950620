"""The package's user-facing error: bad input data, reported in one line naming what is wrong."""


class InputError(ValueError):
    """One utterance's (or file's) data cannot be used; the message names it."""
