"""Errors that are the user's to fix: the CLI prints their message on one line, no traceback."""

QUOTE_LIMIT = 60


class UserError(Exception):
    """Bad input, unknown names, missing files: anything the user can correct."""


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a message about a 200 MB header stays short.

    repr also escapes control characters (NUL, escape sequences), which must not reach a terminal.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(str(value)):,} characters)"


def one_line(error: BaseException) -> str:
    """An exception as ``Type: first line of its message``, for messages that quote a cause."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
