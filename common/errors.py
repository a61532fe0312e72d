"""The project's error types, and errors as the one line that a message, a leaderboard cell or a
console line shows."""

import contextlib


class ConfigError(ValueError):
    """Bad input, reported as one line that names the field, the value and the fix; several problems
    found in one pass (``Problems``) are one line each.

    The CLI prints ``error: <line>`` for each and exits with status 2 before any cluster work starts.
    """

    @property
    def problems(self) -> list[str]:
        return str(self).splitlines() or [""]


class TrialError(RuntimeError):
    """A trial that cannot go on (out of memory, non-finite loss). Raised inside a Ray Train worker:
    that trial is marked failed with this message on the leaderboard, and the sweep goes on."""


class StorageError(ConfigError):
    """A write under ``--storage-path`` that failed (no space, no permission, a bad mount): one line
    naming the path and the fix, exit 2. Every write is a temp file renamed into place, so what was
    written before stays as it was."""


class Problems:
    """The problems of one validation pass, so that a user fixes them all in one go instead of one
    per run: ``add`` each, or run a check ``with problems.collecting():`` to keep its ConfigError;
    ``raise_any`` raises them together (one line each)."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def add(self, message: str) -> None:
        if message not in self.found:
            self.found.append(message)

    @contextlib.contextmanager
    def collecting(self):
        try:
            yield self
        except StorageError:  # a failed write is not a problem of the flags
            raise
        except ConfigError as e:
            for line in e.problems:
                self.add(line)

    def raise_any(self) -> None:
        if self.found:
            raise ConfigError("\n".join(self.found))


def os_reason(e: OSError) -> str:
    """``FileNotFoundError: No such file or directory``: an OSError's type and reason, one line."""
    text = e.strerror or (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def root_cause_line(err: BaseException | str) -> str:
    """The root cause of a trial's error (or of its error.txt's text), on one line (Ray wraps it a
    few times)."""
    text = str(err)
    if "TrialError: " in text:  # ours: already says what happened and at which step
        return text[text.rindex("TrialError: ") + len("TrialError: "):].strip().splitlines()[0][:300]
    for marker in ("OutOfMemoryError:", "ConfigError:", "RuntimeError:", "Error:"):
        if marker in text:
            tail = text[text.rindex(marker):]
            return tail.strip().splitlines()[0][:300]
    return text.strip().splitlines()[-1][:300] if text.strip() else type(err).__name__


def first_line(exc: BaseException) -> str:
    """``Type: message``, the innermost cause's first line: what actually went wrong, not a wrapper's
    summary (lines of only stars or spaces, which NLTK's banners are, skipped)."""
    while exc.__cause__ is not None:  # `raise ... from`: the wrapped error (not what its handler hit)
        exc = exc.__cause__
    lines = [ln.strip(" *") for ln in str(exc).splitlines() if ln.strip(" *")]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
