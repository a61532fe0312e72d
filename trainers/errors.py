"""The project's one user-facing error type."""


class ConfigError(ValueError):
    """Bad input, reported as one line that names the field, the value and the fix.

    The CLI prints ``error: <message>`` and exits with status 2 before any cluster work starts.
    """
