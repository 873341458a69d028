"""Errors that are the user's to fix: the CLI prints their message on one line, no traceback."""

import difflib
from collections.abc import Iterable

QUOTE_LIMIT = 60


class UserError(Exception):
    """Bad input, unknown names, missing files: anything the user can correct."""


class SynnavError(UserError):
    """What the Python API (``synnav_cli.load_model`` and the model it returns) raises for every
    error the CLI would end with ``Error: ...``: its message is that line without ``Error: ``
    (docs/python.md). A UserError, so ``except UserError`` catches it too."""


def os_error_line(error: OSError) -> str:
    """A full disk, a lost mount, a permission, in one line: the reason and the file."""
    where = f": {error.filename}" if error.filename else ""
    return f"{error.strerror or error}{where}"


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


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'X'?`` with the choice closest to ``name`` (case aside), as click says for
    a mistyped command; empty when none is close."""
    if len(name) > QUOTE_LIMIT:  # no name is that long; not worth comparing
        return ""
    by_key = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(name.lower(), list(by_key), n=1)
    return f" Did you mean {quoted(by_key[close[0]])}?" if close else ""
