"""The ONE place that opens a NATS connection, and the stream set-up every NATS user of ours shares.

Connection failures are translated here, where they enter our code: a server that cannot be reached surfaces
as ``NatsUnavailable`` (a ``TransientError``); a stream the server refuses to set up as ``ConfigError``.
All durations are seconds.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StreamConfig, StreamInfo

from etl.config import Settings
from etl.envvalues import redact_url
from etl.errors import ConfigError, TransientError
from etl.natsio.stream_limits import StreamLimits, apply_limits

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 2
DEFAULT_RECONNECT_WAIT_S = 1
# The first connect retries this many times after its first attempt, so a process started without NATS fails
# within CONNECT_BUDGET_S; once connected, the client reconnects forever.
INITIAL_CONNECT_RETRIES = 2
RECONNECT_FOREVER = -1
CONNECT_BUDGET_S = float((INITIAL_CONNECT_RETRIES + 1) * DEFAULT_CONNECT_TIMEOUT_S
                         + INITIAL_CONNECT_RETRIES * DEFAULT_RECONNECT_WAIT_S)
# A dead peer is noticed after about PING_INTERVAL x MAX_OUTSTANDING_PINGS seconds (the default is 4 minutes).
DEFAULT_PING_INTERVAL_S = 10
DEFAULT_MAX_OUTSTANDING_PINGS = 3
DEFAULT_DRAIN_TIMEOUT_S = 5
# A server's status reply (to a request with a reply subject) is a message with these headers, as nats-py parses it.
STATUS_HEADER = "Status"
DESCRIPTION_HEADER = "Description"
NO_RESPONDERS_STATUS = "503"  # nothing subscribes to the request's subject (e.g. no stream captures it)
CONTROL_STATUS = "100"  # a heartbeat or flow control


def status_of(msg: Msg) -> str | None:
    """The status code a server reply carries, or ``None`` for an ordinary message."""
    return msg.headers.get(STATUS_HEADER) if msg.headers else None


# Driver errors meaning "the server is not there right now": worth a retry, never the data's fault.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.NoServersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    asyncio.TimeoutError,
    OSError,
)


# A stream's max_bytes is reserved from the server's JetStream storage: a server refuses one it cannot reserve.
JS_ERR_INSUFFICIENT_STORAGE = 10047
STORAGE_HINT = (" (max_bytes is reserved from the server's JetStream storage: lower NATS_STREAM_MAX_BYTES or "
                "NATS_ENRICHED_STREAM_MAX_BYTES, or give the server more, e.g. max_file_store)")


class NatsUnavailable(TransientError):
    """The NATS server cannot be reached, or did not answer in time."""


def describe(error: BaseException) -> str:
    """A one-line description of a driver error: many nats-py errors have an empty ``str``."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextmanager
def unavailable_as(error_type: type[TransientError], what: str) -> Iterator[None]:
    """Re-raise any of ``UNAVAILABLE_ERRORS`` inside the block as ``error_type("<what>: <cause>")``."""
    try:
        yield
    except UNAVAILABLE_ERRORS as e:
        raise error_type(f"{what}: {describe(e)}") from e


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A TLS context when NATS_TLS_* is set or the URL says ``tls://``; None for plain connections.

    The CA verifies the server (the system's CAs when NATS_TLS_CA is empty); cert and key authenticate us.
    """
    tls_url = any(url.startswith("tls://") for url in settings.nats_servers)
    if not (settings.nats_tls_ca or settings.nats_tls_cert or tls_url):
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.nats_tls_ca or None)
    if settings.nats_tls_cert:
        context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
    return context


def auth_options(settings: Settings) -> dict[str, Any]:
    """TLS and a credentials file as nats-py takes them, and a user and password or a token: in NATS_URL, or
    NATS_PASSWORD for the user NATS_URL names (a token when it names none)."""
    options: dict[str, Any] = {}
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    if settings.nats_creds:
        options["user_credentials"] = settings.nats_creds
    return {**(password_credentials(settings) or url_credentials(settings.nats_servers)), **options}


def password_credentials(settings: Settings) -> dict[str, str]:
    """``NATS_PASSWORD`` as nats-py options: with the user every URL names (Settings checks they name one, or
    none), else as a token. Empty without ``NATS_PASSWORD``."""
    if not settings.nats_password:
        return {}
    user = urlsplit(settings.nats_servers[0]).username
    return {"token": settings.nats_password} if user is None else {"user": user, "password": settings.nats_password}


def url_credentials(urls: list[str]) -> dict[str, str]:
    """The user and password, or token, that every URL of ``urls`` carries alike, as nats-py options.

    nats-py sends a URL's credentials only to that URL's server, not to the cluster members it learns of
    from the server: as options they go to every server. Empty when the URLs carry none, or differ.
    """
    found = {(parts.username, parts.password) for parts in map(urlsplit, urls)}
    if len(found) != 1:
        return {}
    user, password = found.pop()
    if user is None:
        return {}
    return {"token": user} if password is None else {"user": user, "password": password}


class _ConnectionLog:
    """A client's callbacks: they log every disconnection, reconnection and asynchronous error, and keep why a
    connect failed (a refused credential or certificate), since nats-py's own exception only says that no server
    was left to try."""

    def __init__(self, nc: Client, name: str, url: str) -> None:
        self._nc, self._name, self._url = nc, name, url
        self._extra = {"nats_client": name}
        self.cause: str | None = None
        self.connected = False  # set once the first connect succeeded

    def callbacks(self) -> dict[str, Any]:
        """The callbacks as ``Client.connect``'s options."""
        return {"error_cb": self.on_error, "disconnected_cb": self.on_disconnected,
                "reconnected_cb": self.on_reconnected, "closed_cb": self.on_closed}

    async def on_error(self, e: Exception) -> None:
        # A connection reset says less than the error it follows or precedes.
        if self.cause is None or not isinstance(e, ConnectionError):
            self.cause = describe(e)
        # Until the first connect succeeds, the cause goes into the NatsUnavailable ``connect`` raises: a warning per
        # attempt would only repeat it (and make a failed `etl` command several lines).
        level = logging.WARNING if self.connected else logging.DEBUG
        log.log(level, "NATS %s: %s", self._name, describe(e), extra=self._extra)

    async def on_disconnected(self) -> None:
        if not self._nc.is_closed:  # a close also reports a disconnection first
            log.warning("NATS %s disconnected from %s; reconnecting", self._name, self._url, extra=self._extra)

    async def on_reconnected(self) -> None:
        log.info("NATS %s reconnected to %s", self._name, connected_url(self._nc) or self._url, extra=self._extra)

    async def on_closed(self) -> None:
        log.info("NATS %s connection closed", self._name, extra=self._extra)


async def connect(settings: Settings, name: str) -> Client:
    """Connect to any server of ``settings.nats_url`` (a list of seeds), labelled ``name`` in the server's
    monitoring. Servers the cluster announces join the pool, so a reconnect also tries members not listed.

    Gives up within ``CONNECT_BUDGET_S`` seconds and raises ``NatsUnavailable``; once
    connected, the client reconnects forever and buffers publishes while it does. Callbacks log every
    disconnection, reconnection and asynchronous error.
    """
    nc = Client()
    url = redact_url(settings.nats_url)
    events = _ConnectionLog(nc, name, url)
    attempt = nc.connect(
        servers=settings.nats_servers, name=name,
        connect_timeout=DEFAULT_CONNECT_TIMEOUT_S, reconnect_time_wait=DEFAULT_RECONNECT_WAIT_S,
        max_reconnect_attempts=INITIAL_CONNECT_RETRIES, ping_interval=DEFAULT_PING_INTERVAL_S,
        max_outstanding_pings=DEFAULT_MAX_OUTSTANDING_PINGS, drain_timeout=DEFAULT_DRAIN_TIMEOUT_S,
        **events.callbacks(), **auth_options(settings),
    )
    try:
        with unavailable_as(NatsUnavailable, f"cannot connect to NATS at {url}"):
            # nats-py keeps retrying some failures (a TLS handshake refused) past its own limits: bound it here.
            await asyncio.wait_for(attempt, CONNECT_BUDGET_S + DEFAULT_CONNECT_TIMEOUT_S)
    except NatsUnavailable as e:
        await nc.close()
        if events.cause is not None:
            raise NatsUnavailable(f"{e} (cause: {events.cause})") from e.__cause__
        raise
    events.connected = True
    # nats-py reads this option on every reconnection: bounded for the first connect, unbounded from now on.
    nc.options["max_reconnect_attempts"] = RECONNECT_FOREVER
    log.info("NATS %s connected to %s", name, connected_url(nc) or url, extra={"nats_client": name})
    return nc


def connected_url(nc: Client) -> str:
    """The server ``nc`` is connected to, credentials redacted; empty when not connected."""
    current = nc.connected_url
    return redact_url(current.geturl()) if current is not None else ""


async def close(nc: Client) -> None:
    """Drain ``nc`` (flush what is buffered, e.g. acks) and close it; close at once when not connected.

    Bounded by ``DEFAULT_DRAIN_TIMEOUT_S`` plus one flush. Raises no driver error: this runs on the way out.
    """
    if nc.is_closed:
        return
    if nc.is_connected and not nc.is_draining:
        try:
            await nc.drain()
            return
        except UNAVAILABLE_ERRORS as e:
            log.warning("NATS drain failed, closing: %s", describe(e))
    await nc.close()


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether subject ``pattern`` (which may hold ``*`` and ``>`` wildcards) captures literal ``subject``."""
    want = subject.split(".")
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if token == ">":
            return len(want) > i
        if i >= len(want) or token not in ("*", want[i]):
            return False
    return len(tokens) == len(want)


async def ensure_stream(
    js: JetStreamContext, name: str, subjects: Iterable[str], *, kept: StreamLimits | None = None, **limits: Any
) -> StreamInfo:
    """Create stream ``name`` capturing ``subjects`` if missing, else bind to it.

    ``limits`` are ``StreamConfig`` fields (``storage``, ``duplicate_window`` in seconds, ``num_replicas``, ...)
    used only when creating. Otherwise an existing stream's config is not overwritten (a warning says so when its
    replicas differ from ``num_replicas``), except that subjects it lacks are added to it and its size and age
    limits are brought to ``kept`` (``etl.natsio.stream_limits``).
    Raises ``NatsUnavailable`` when JetStream does not answer, ``ConfigError`` when the server refuses the
    stream (e.g. its subjects overlap another stream's, or it has no room for its ``max_bytes``).
    """
    wanted = list(subjects)
    with unavailable_as(NatsUnavailable, f"cannot set up NATS stream {name}"):
        try:
            try:
                info = await js.stream_info(name)
                _warn_on_other_replicas(info, limits.get("num_replicas"))
                if kept is not None:
                    info = await apply_limits(js, info, kept)
            except nats.js.errors.NotFoundError:
                limits.update(kept.config_fields() if kept is not None else {})
                info = await _create_stream(js, StreamConfig(name=name, subjects=wanted, **limits))
            return await _add_missing_subjects(js, info, wanted)
        except nats.js.errors.APIError as e:
            if isinstance(e, UNAVAILABLE_ERRORS) and e.err_code != JS_ERR_INSUFFICIENT_STORAGE:
                raise
            hint = STORAGE_HINT if e.err_code == JS_ERR_INSUFFICIENT_STORAGE else ""
            raise ConfigError(f"NATS refused stream {name} for subjects {wanted}: {e.description}{hint}") from e


async def _create_stream(js: JetStreamContext, config: StreamConfig) -> StreamInfo:
    try:
        info = await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        # Another replica may have created it a moment ago; if so, use theirs.
        assert config.name is not None
        try:
            return await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            pass
        raise
    log.info("created NATS stream %s for %s with %d replicas", config.name, config.subjects,
             config.num_replicas or 1)
    return info


def _warn_on_other_replicas(info: StreamInfo, wanted: int | None) -> None:
    have = info.config.num_replicas or 1
    if wanted is not None and have != wanted:
        log.warning("NATS stream %s has %d replicas, not the %d NATS_STREAM_REPLICAS asks for; using it as it is "
                    "(change it with `nats stream edit --replicas`)", info.config.name, have, wanted)


async def _add_missing_subjects(js: JetStreamContext, info: StreamInfo, wanted: list[str]) -> StreamInfo:
    have = list(info.config.subjects or [])
    missing = [s for s in wanted if not any(subject_matches(p, s) for p in have)]
    if not missing:
        return info
    log.warning("NATS stream %s lacks subjects %s; adding them", info.config.name, missing)
    return await js.update_stream(info.config.evolve(subjects=have + missing))
