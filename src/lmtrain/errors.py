"""Errors a user can cause and fix.

Anything raised as a :class:`LmtrainError` is reported by the CLI as one line
(``error: <message>``) with exit status 2, never as a traceback. The message
names what is wrong *and* the fix.
"""


class LmtrainError(Exception):
    """A problem with the user's input or settings, with a one-line fix."""


class ConfigError(LmtrainError, ValueError):
    """Contradictory or invalid arguments."""


class DataError(LmtrainError, ValueError):
    """Unreadable, empty or malformed input data."""


class TrainingError(LmtrainError, RuntimeError):
    """Training cannot go on (for example the loss became NaN)."""
