"""``python -m workers.bridge``: the NATS -> Dramatiq bridge process."""

from __future__ import annotations

import logging
import os
import sys

from etl.config import Settings
from etl.errors import ConfigError


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as e:
        sys.stderr.write(f"configuration error: {e}\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from etl.actors import enqueue_raw  # sets up the broker the batches go to
    from etl.bridge import run_bridge

    run_bridge(settings, enqueue_raw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
