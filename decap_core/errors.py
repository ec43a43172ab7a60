"""The one error type decap raises for problems a user can fix (bad input, missing files)."""


class DecapError(Exception):
    """A user-facing problem; the command line prints its message as one line, no traceback."""
