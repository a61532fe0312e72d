"""The project's error types, and how an OS error reads inside one of their one-line messages."""


class ConfigError(ValueError):
    """Bad input, reported as one line that names the field, the value and the fix.

    The CLI prints ``error: <message>`` and exits with status 2 before any cluster work starts.
    """


class TrialError(RuntimeError):
    """A trial that cannot go on (out of memory, non-finite loss). Raised inside a Ray Train worker:
    that trial is marked failed with this message on the leaderboard, and the sweep goes on."""


class StorageError(ConfigError):
    """A write under ``--storage-path`` that failed (no space, no permission, a bad mount): one line
    naming the path and the fix, exit 2. Every write is a temp file renamed into place, so what was
    written before stays as it was."""


def os_reason(e: OSError) -> str:
    """``FileNotFoundError: No such file or directory``: an OSError's type and reason, one line."""
    text = e.strerror or (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
