"""Wiring of one worker process: settings, broker, sinks, dead-letter store and resolver, built once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from etl.broker import build_broker
from etl.config import Settings, exit_on_config_error, load_settings
from etl.errors import ConfigError
from etl.lookups.live import LiveLookups
from etl.lookups.sources import table_sources
from etl.middleware.circuit_breaker import CircuitBreakers
from etl.middleware.dead_letters import DeadLetterOnFailure, FailureClock
from etl.middleware.lookups import LookupsOnBoot
from etl.middleware.prometheus import PoolMetrics
from etl.middleware.retention import RetentionOnBoot
from etl.pipeline.dlq import DeadLetterStore
from etl.rdns.strategies import Resolver, resolver_for
from etl.runtime.logs import setup_logging
from etl.runtime.workerenv import is_worker_process, service_name
from etl.sinks.registry import CloseSinksOnShutdown, Sinks, sink_factories
from etl.stages import ENRICH


@dataclass
class App:
    settings: Settings
    broker: RedisBroker
    sinks: Sinks
    resolver: Resolver
    lookups: LiveLookups
    _dlq: DeadLetterStore | None = field(default=None, repr=False)

    def dead_letters(self) -> DeadLetterStore:
        if self._dlq is None:
            self._dlq = DeadLetterStore.from_settings(self.broker.client, self.settings)
        return self._dlq


def failed_events(message: dramatiq.MessageProxy) -> list[tuple[Any, str]]:
    """The events a failed message carried, for the dead-letter queue."""
    if message.actor_name == ENRICH.actor:
        # A raw batch as packed by ``rawbatch.pack``: base64 entries are already text.
        texts = message.args[0]
        binary = set(message.args[1] if len(message.args) > 1 and message.args[1] else ())
        return [(text, "base64" if i in binary else "text") for i, text in enumerate(texts)]
    return [(event, "json") for event in message.args[0]]


def lookups_for(settings: Settings) -> LiveLookups:
    """The lookup tables the settings configure, not loaded yet: only an enrich worker loads them
    (``LookupsOnBoot``)."""
    sources = table_sources(intel_paths=settings.intel_paths, assets_path=settings.assets_path,
                            geoip_city_path=settings.geoip_city_path, geoip_asn_path=settings.geoip_asn_path)
    return LiveLookups(sources, settings.lookup_reload_s)


def build_app(settings: Settings) -> App:
    app: App
    sinks = Sinks(sink_factories(settings))
    lookups = lookups_for(settings)
    broker = build_broker(
        settings,
        metrics=[PoolMetrics()] if is_worker_process() else [],
        # Breakers go last (after Retries): their before hook runs after every other, and each of those undoes itself
        # in after_skip_message when the breaker skips. Retries has no after_skip_message: a delay spends no retry.
        before_retry_decision=[FailureClock(), CircuitBreakers(failures=settings.breaker_failures,
                                                               cooldown_s=settings.breaker_cooldown_ms / 1000)],
        after_retry_decision=[DeadLetterOnFailure(lambda: app.dead_letters(), failed_events),
                              CloseSinksOnShutdown(sinks), RetentionOnBoot(settings), LookupsOnBoot(lookups)],
    )
    app = App(settings, broker, sinks, resolver_for(settings), lookups)
    return app


def load_app() -> App:
    """Build the app from the environment and make its broker Dramatiq's. Exits 2 on a bad setting."""
    settings = load_settings(os.environ)
    if is_worker_process():
        # Dramatiq configured its own log format before importing us; ours replaces it.
        setup_logging(settings.log_level, settings.log_format, service=service_name())
    try:
        app = build_app(settings)
    except ConfigError as e:  # e.g. RDNS_MODE=ptr with no nameserver to ask
        exit_on_config_error(str(e))
    dramatiq.set_broker(app.broker)
    return app

