"""The worker pool's metrics endpoint, in place of the exposition server Dramatiq's Prometheus middleware forks.

Dramatiq's own server answers one connection at a time with no time-out, so a single idle client stops every
scrape and ``etl health --pool``. ``PoolMetrics.forks`` runs ``serve_pool_metrics`` instead: the same metrics
(Dramatiq's multiprocess directory, which its workers write and it empties at start) from a bounded threaded
server (``etl.runtime.httpserve``).

Where to listen and read are module constants of ``dramatiq.middleware.prometheus`` (``HTTP_HOST``, ``HTTP_PORT``,
``DB_PATH``), read once from Dramatiq's environment variables at import: this is the one place that reads them.
``exposition_config`` checks they are there and well-typed and otherwise reads the same environment variables
with Dramatiq's documented defaults, with one warning.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from types import ModuleType

from etl.runtime.httpserve import BoundedHandler, BoundedHTTPServer

log = logging.getLogger(__name__)

DEFAULT_HOST = "0.0.0.0"  # noqa: S104 - Dramatiq's default; pools.py passes HEALTH_HOST
DEFAULT_PORT = 9191


@dataclass(frozen=True)
class ExpositionConfig:
    host: str
    port: int
    directory: str


def exposition_config(module: object) -> ExpositionConfig:
    """Where Dramatiq's exposition server would listen and read, from its ``module`` (``None`` when it could not
    be imported) or, when that lacks the constants, from the environment as Dramatiq reads it."""
    host, port, directory = (getattr(module, name, None) for name in ("HTTP_HOST", "HTTP_PORT", "DB_PATH"))
    if isinstance(host, str) and isinstance(port, int) and isinstance(directory, str):
        return ExpositionConfig(host, port, directory)
    log.warning("dramatiq.middleware.prometheus lacks HTTP_HOST, HTTP_PORT or DB_PATH; reading dramatiq_prom_* "
                "from the environment instead")
    default_directory = os.path.join(tempfile.gettempdir(), "dramatiq-prometheus")
    return ExpositionConfig(os.environ.get("dramatiq_prom_host", DEFAULT_HOST),
                            int(os.environ.get("dramatiq_prom_port", str(DEFAULT_PORT))),
                            os.environ.get("dramatiq_prom_db", default_directory))


def _dramatiq_module() -> ModuleType | None:
    try:
        from dramatiq.middleware import prometheus
    except ImportError:
        return None
    return prometheus


def metrics_handler(directory: str) -> type[BoundedHandler]:
    """A handler serving the metrics of every process that writes to ``directory``, on any path (as Dramatiq's)."""

    class Handler(BoundedHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            # Imported at the first request, as Dramatiq's server does, so the port is bound without waiting.
            from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)
            self.reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    return Handler


def serve_pool_metrics() -> int:
    """Dramatiq's fork function: serve the pool's metrics until the process is stopped. Returns the exit code."""
    from etl.config import load_settings
    from etl.runtime.logs import setup_logging
    from etl.runtime.workerenv import service_name

    # Forked from Dramatiq's parent process, which never loads etl.actors: its lines would be in Dramatiq's format.
    settings = load_settings(os.environ)
    setup_logging(settings.log_level, settings.log_format, service=service_name())
    config = exposition_config(_dramatiq_module())
    # prometheus_client picks its storage when first imported: the multiprocess directory, as in the workers.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = config.directory
    server = BoundedHTTPServer((config.host, config.port), metrics_handler(config.directory))
    log.info("pool metrics on port %d", config.port, extra={"port": config.port})
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
