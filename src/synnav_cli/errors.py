"""Errors that are the user's to fix: the CLI prints their message on one line, no traceback."""


class UserError(Exception):
    """Bad input, unknown names, missing files: anything the user can correct."""
