"""NATS connection with reconnect, JetStream streams and KV buckets declared from :mod:`contracts.streams`.

A service starts even when NATS is down: :meth:`Messaging.start` keeps trying in the background, readiness reports
``degraded`` meanwhile, and the outbox keeps events until the connection is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from contracts.streams import KV_BUCKETS, STREAMS, KeyValueBucket, Stream

__all__ = ["Messaging", "MessagingUnavailable", "declare_streams", "redact_url"]

log = logging.getLogger(__name__)


class MessagingUnavailable(RuntimeError):
    """NATS is not connected right now."""


def _storage(kind: str) -> StorageType:
    return StorageType.FILE if kind == "file" else StorageType.MEMORY


def redact_url(url: str) -> str:
    """A NATS URL without its user information, for logs and health reports."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def _stream_config(stream: Stream, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=stream.name,
        description=stream.description,
        subjects=list(stream.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=_storage(stream.storage),
        max_age=float(stream.max_age_seconds) if stream.max_age_seconds else None,
        duplicate_window=float(stream.duplicate_window_seconds),
        max_msgs_per_subject=stream.max_msgs_per_subject,
        num_replicas=replicas,
    )


async def declare_streams(
    js: JetStreamContext,
    streams: tuple[Stream, ...] = STREAMS,
    buckets: tuple[KeyValueBucket, ...] = KV_BUCKETS,
    *,
    replicas: int = 1,
) -> None:
    """Create (or bring up to date) every stream and KV bucket. Idempotent."""
    for stream in streams:
        config = _stream_config(stream, replicas)
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Exists with another configuration: converge on the one declared in contracts.
            await js.update_stream(config)
    for bucket in buckets:
        await js.create_key_value(
            KeyValueConfig(
                bucket=bucket.name,
                description=bucket.description,
                history=bucket.history,
                storage=_storage(bucket.storage),
                replicas=replicas,
            )
        )


class Messaging:
    """One NATS client per process, connected in the background and reconnecting forever."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        declare: bool = True,
        credentials_file: str | None = None,
        stream_replicas: int = 1,
    ) -> None:
        self.url = url
        self.credentials_file = credentials_file
        self.stream_replicas = stream_replicas
        self.name = name
        self.declare = declare
        self.nc: NATS | None = None
        self.last_error: str | None = "not connected yet"
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._on_ready: list[Callable[[], Awaitable[None]]] = []

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def js(self) -> JetStreamContext:
        if self.nc is None or not self.nc.is_connected:
            raise MessagingUnavailable(self.last_error or "NATS is not connected")
        return self.nc.jetstream(timeout=5)

    def on_ready(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` after every (re)connection, once streams are declared."""
        self._on_ready.append(callback)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._connect_forever(), name=f"nats-connect-{self.name}")

    async def wait_ready(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _connect_forever(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                self.nc = await nats.connect(
                    servers=[self.url],
                    name=self.name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    ping_interval=10,
                    max_outstanding_pings=2,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    user_credentials=self.credentials_file,
                )
            except Exception as exc:  # noqa: BLE001 - any failure means "try again later"
                self.last_error = f"cannot connect to {redact_url(self.url)}: {type(exc).__name__}"
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            log.info("connected to NATS at %s", redact_url(self.url))
            await self._after_connect()
            return

    async def _after_connect(self) -> None:
        try:
            if self.declare:
                await declare_streams(self.js, replicas=self.stream_replicas)
            self.last_error = None
            self._ready.set()
            for callback in self._on_ready:
                await callback()
        except Exception as exc:  # noqa: BLE001
            self.last_error = f"declaring streams failed: {type(exc).__name__}: {exc}"
            log.warning("%s", self.last_error)

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"

    async def _on_disconnected(self) -> None:
        if not self._closing:
            self.last_error = "disconnected from NATS"
            self._ready.clear()
            log.warning("disconnected from NATS at %s", redact_url(self.url))

    async def _on_reconnected(self) -> None:
        log.info("reconnected to NATS at %s", redact_url(self.url))
        asyncio.get_running_loop().create_task(self._after_connect())

    async def check(self, timeout: float = 1.0) -> str | None:
        """None when NATS and JetStream answer, else the reason they do not."""
        if not self.connected:
            return self.last_error or "disconnected from NATS"
        try:
            await asyncio.wait_for(self.js.account_info(), timeout)
        except Exception as exc:  # noqa: BLE001
            return f"JetStream does not answer: {type(exc).__name__}"
        return self.last_error

    async def close(self) -> None:
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            # Not drain(): every publish here already awaited its PubAck, and draining pull subscriptions can hang.
            try:
                await asyncio.wait_for(self.nc.flush(), 1)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            await self.nc.close()
