"""One error hierarchy for the pipeline.

Every failure that crosses a module boundary is one of these. Drivers' exceptions are translated where they
enter our code, so the rest of the pipeline decides on the *kind* of failure, never on a driver's class:

- ``TransientError``: worth retrying with backoff (a dropped connection, a server down, a timeout, a deadlock).
- ``PermanentError``: retrying cannot help; the event or batch goes to the dead-letter queue with a reason.
"""

from __future__ import annotations


class EtlError(Exception):
    """Base of every error the pipeline raises on purpose."""


class ConfigError(EtlError):
    """A setting is missing or malformed. The message is one line meant for the operator."""


class TransientError(EtlError):
    """A failure that may succeed on retry."""


class PermanentError(EtlError):
    """A failure that will not succeed on retry."""


class SinkUnavailable(TransientError):
    """A sink's server cannot be reached or timed out."""


class SinkDataError(PermanentError):
    """A sink rejected the data itself (a constraint, a type, a value out of range)."""


class BadEvent(PermanentError):
    """An incoming event breaks the event contract. ``reason`` says precisely how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
