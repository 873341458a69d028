"""Assertions many test modules share."""

from __future__ import annotations


def one_error_line(result, *needles: str) -> str:
    """``result`` (a CliRunner result) failed as user errors must: exit code 1, no traceback, and
    exactly one ``Error:`` line, holding every needle. Returns that line."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and 'File "' not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]
