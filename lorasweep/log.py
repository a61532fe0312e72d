"""What the driver says, through one logger: ``say`` writes ``[lorasweep] <text>``, ``warn`` writes
``[lorasweep] warning: <text>``, both to stdout beside Tune's own lines. The logger is ``lorasweep``
in Python's ``logging``, so a program that embeds lorasweep can silence, filter or redirect it
(``logging.getLogger("lorasweep").setLevel(logging.WARNING)``). One-line errors that end a command
(``error: ...`` on stderr, exit 2) are the CLI's, not log lines."""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("lorasweep")


class _Stdout(logging.StreamHandler):
    """A handler on whatever ``sys.stdout`` is when a line is written (pytest's capture, a redirect)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _Prefix(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        warning = "warning: " if record.levelno >= logging.WARNING else ""
        return f"[lorasweep] {warning}{record.getMessage()}"


if not LOGGER.handlers:
    _handler = _Stdout()
    _handler.setFormatter(_Prefix())
    LOGGER.addHandler(_handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # a root handler would print every line twice


def say(text: str) -> None:
    LOGGER.info(text)


def warn(text: str) -> None:
    LOGGER.warning(text)
