"""How an ``etl`` command ends when it cannot do its work: one line naming the server and the cause, and an exit
code from ``etl.errors``, instead of a driver's traceback. ``etl.cli``'s command group applies it to every command,
so a new command fails the same way without a handler of its own.

Our own errors (``etl.errors``) already name their server, credentials redacted: drivers' errors are translated
where they enter our code. The one exception is Redis, which the dead-letter store and the broker use through the
redis client directly, so its failures are recognised here and named after ``REDIS_URL``. Anything else is a bug,
and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from etl.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError, EtlError

# The epilog of ``etl --help``; "\b" keeps click from rewrapping it.
EXIT_CODES_HELP = f"""\b
Exit codes:
  {EXIT_OK}  done
  {EXIT_FAILURE}  failed: a server unreachable, a password refused, a table missing... (one line on stderr says which)
  {EXIT_CONFIG}  a bad setting or command line, or a tool missing (one line on stderr names it)"""


@dataclass(frozen=True)
class Failure:
    """What the operator is told (one line, credentials redacted) and the exit code."""

    message: str
    exit_code: int


def one_line(text: str) -> str:
    """``text`` on one line: a driver's hint on a line of its own (libpq's "Is the server running...?") is kept,
    after a semicolon."""
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def failure_of(error: BaseException, redis_where: Callable[[], str]) -> Failure | None:
    """The line and exit code that end a command failed by ``error``, or ``None`` for an error that is not a
    failure of a server or a setting (a bug: its traceback is what helps). ``redis_where()`` names Redis, its
    credentials redacted; it is called only for a Redis failure."""
    if isinstance(error, ConfigError):
        return Failure(one_line(f"configuration error: {error}"), EXIT_CONFIG)
    if isinstance(error, EtlError):
        return Failure(one_line(f"error: {error}"), EXIT_FAILURE)
    if _is_redis_failure(error):
        # A refused password is a redis.AuthenticationError, whose text holds no secret.
        return Failure(one_line(f"error: cannot use Redis at {redis_where()}: {type(error).__name__}: {error}"),
                       EXIT_FAILURE)
    return None


def _is_redis_failure(error: BaseException) -> bool:
    """Redis cannot be reached, refused our credentials or rights, or cannot take a write (a replica, or full under
    ``noeviction``): the server's state, not the command's."""
    from redis import exceptions  # here: commands that never touch Redis do not load it

    return isinstance(error, (exceptions.ConnectionError, exceptions.TimeoutError, exceptions.NoPermissionError,
                              exceptions.ReadOnlyError, exceptions.OutOfMemoryError))
