"""Known errors become one line on stderr and exit status 1; no traceback for a user's mistake."""

from __future__ import annotations

from indexing.errors import NominalError

EXIT_ERROR = 1


class CliError(Exception):
    """A refusal the CLI itself makes (a port in use, an argument that cannot work): one line, exit 1."""


def format_known_exception(error: BaseException) -> str | None:
    """One line for errors a user can act on; None for bugs, which keep their traceback."""
    if isinstance(error, (NominalError, CliError)):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return f"{error.filename}: no such file or directory"
    if isinstance(error, PermissionError):
        return f"{error.filename}: permission denied"
    if isinstance(error, ValueError):
        return str(error)
    return None
