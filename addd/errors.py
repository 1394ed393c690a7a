"""The root of every error addd raises on purpose.

Each module keeps its own subclass (``ConfigError``, ``DataError``, ``AttackError``, ...), so a
caller can catch one concern or, as a CLI does, catch ``AdddError`` once and print the message.
It subclasses ``ValueError`` because every one of them means "an input, a setting or a file is
not usable", and code that predates this root caught them as ``ValueError``.
"""

from __future__ import annotations


class AdddError(ValueError):
    """Something addd cannot use as given; the message says what to do about it."""
