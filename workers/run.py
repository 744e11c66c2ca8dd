"""``python -m workers.run POOL``: run one worker pool (a Dramatiq worker on that pool's queue)."""

from __future__ import annotations

import os
import sys

from etl.config import exit_on_config_error
from etl.errors import ConfigError
from etl.pools import dramatiq_command
from etl.stages import NAMES


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write(f"usage: python -m workers.run {{{'|'.join(NAMES)}}}\n")
        return 2
    try:
        command, extra_env = dramatiq_command(argv[0], os.environ)
    except ConfigError as e:
        exit_on_config_error(str(e))
    os.execve(command[0], command, {**os.environ, **extra_env})
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
