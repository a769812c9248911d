"""The one exception type that means "the user asked for something invalid".

The CLI prints a ``UserError`` as a single ``error: ...`` line and exits with status 2; any
other exception is a bug and keeps its traceback. Messages name the file, line, flag or
recipe key at fault and say what would be valid.
"""


class UserError(Exception):
    """Bad input from the user: a malformed file, an unknown name, an impossible request."""


def did_you_mean(name: str, valid: list[str] | tuple[str, ...]) -> str:
    """'valid: a, b, c' plus the closest match, for error messages."""
    import difflib

    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"valid: {', '.join(sorted(valid))}{hint}"
