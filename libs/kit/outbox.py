"""Transactional outbox: events are rows written with the business rows, published by a relay after commit.

:func:`enqueue` adds the outbox row to the caller's session, so the event exists if and only if the business change
was committed. :class:`OutboxRelay` publishes pending rows in order to JetStream with ``Nats-Msg-Id`` = event id and
marks them sent only after the PubAck; a crash between the two re-publishes a row, which JetStream drops as a
duplicate within the stream's duplicate window. While NATS is down rows simply wait, and requests still succeed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind
from sqlalchemy import LargeBinary, delete, event, func, update
from sqlmodel import Column, Field, Session, SQLModel, col, select

from contracts.envelope import Envelope
from contracts.events import Event
from kit.db import Database, utcnow
from kit.messaging import Messaging
from kit.telemetry import current_traceparent, extract_context, inject_context

__all__ = ["OutboxEvent", "OutboxRelay", "enqueue", "pending_count"]

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)
meter = metrics.get_meter(__name__)
published_counter = meter.create_counter(
    "maillage.outbox.published", unit="{event}", description="events published by the outbox relay"
)
failure_counter = meter.create_counter(
    "maillage.outbox.publish_failures", unit="{attempt}", description="publish attempts that failed (NATS down...)"
)

_PENDING_FLAG = "maillage.outbox.pending"


class OutboxEvent(SQLModel, table=True):
    """An event waiting to be published (``sent_at`` is null) or already published."""

    __tablename__ = "outbox"

    seq: int | None = Field(default=None, primary_key=True, description="insertion order, kept by the relay")
    id: str = Field(unique=True, max_length=64, description="event id, sent as Nats-Msg-Id")
    subject: str = Field(max_length=256)
    type: str = Field(max_length=128)
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    traceparent: str | None = Field(default=None, max_length=55)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    sent_at: datetime | None = Field(default=None, index=True)
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)


def enqueue(session: Session, payload: Event, *, source: str) -> Envelope:
    """Add ``payload`` to the outbox in ``session``'s transaction; it is published after the caller commits."""
    traceparent, tracestate = current_traceparent()
    envelope = Envelope(
        source=source,
        type=payload.cloud_type(),
        subject=payload.entity(),
        traceparent=traceparent,
        tracestate=tracestate,
        data=payload.to_data(),
    )
    session.add(
        OutboxEvent(
            id=envelope.id,
            subject=payload.subject(),
            type=envelope.type,
            payload=envelope.to_bytes(),
            traceparent=traceparent,
        )
    )
    session.info[_PENDING_FLAG] = True
    return envelope


def pending_count(database: Database) -> int:
    """How many events wait to be published."""
    with database.session() as session:
        return int(session.exec(select(func.count()).where(col(OutboxEvent.sent_at).is_(None))).one())


# Relays in this process, woken right after a commit that enqueued events (instead of waiting for the next poll).
_wakers: list[Callable[[], None]] = []
_wakers_lock = threading.Lock()


@event.listens_for(Session, "after_commit")
def _wake_relays(session: Session) -> None:
    if session.info.pop(_PENDING_FLAG, False):
        with _wakers_lock:
            wakers = list(_wakers)
        for wake in wakers:
            wake()


@event.listens_for(Session, "after_rollback")
def _forget_pending(session: Session) -> None:
    session.info.pop(_PENDING_FLAG, None)


class OutboxRelay:
    """Publishes pending outbox rows of one database, in order, until stopped."""

    def __init__(
        self,
        database: Database,
        messaging: Messaging,
        *,
        poll_interval: float = 1.0,
        batch_size: int = 100,
        publish_timeout: float = 2.0,
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self.database = database
        self.messaging = messaging
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.publish_timeout = publish_timeout
        self.retention = retention
        self.published = 0
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _waker(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        with _wakers_lock:
            _wakers.append(self._waker)
        self.messaging.on_ready(self._on_ready)
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def _on_ready(self) -> None:
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        with _wakers_lock:
            if self._waker in _wakers:
                _wakers.remove(self._waker)
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()

    async def _run(self) -> None:
        failures = 0
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            self._wake.clear()
            try:
                sent, complete = await self.drain_once()
                failures = 0 if complete else failures + 1
            except Exception as exc:  # noqa: BLE001 - the relay must outlive any single failure
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("outbox relay: %s", self.last_error)
                sent, complete = 0, False
            if loop.time() - last_purge > 3600:
                last_purge = loop.time()
                await asyncio.to_thread(self._purge_sent)
            if complete and sent == self.batch_size:
                continue  # more may be waiting
            timeout = self.poll_interval if failures == 0 else min(0.1 * 2**failures, 5.0)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def drain_once(self) -> tuple[int, bool]:
        """Publish one batch. Returns (rows published, whether every fetched row was published)."""
        if not self.messaging.connected:
            return 0, False
        rows = await asyncio.to_thread(self._fetch_pending)
        if not rows:
            return 0, True
        sent_ids: list[str] = []
        failed: tuple[str, str] | None = None
        for row in rows:
            headers: dict[str, str] = {"Nats-Msg-Id": row.id, "Ce-Type": row.type}
            parent = extract_context({"traceparent": row.traceparent} if row.traceparent else None)
            with tracer.start_as_current_span(f"publish {row.type}", context=parent, kind=SpanKind.PRODUCER) as span:
                span.set_attribute("messaging.system", "nats")
                span.set_attribute("messaging.destination.name", row.subject)
                span.set_attribute("messaging.message.id", row.id)
                inject_context(headers)
                try:
                    await self.messaging.js.publish(
                        row.subject, row.payload, headers=headers, timeout=self.publish_timeout
                    )
                except Exception as exc:  # noqa: BLE001 - NATS down, timeout, no stream: retry later, in order
                    failed = (row.id, f"{type(exc).__name__}: {exc}"[:500])
                    span.record_exception(exc)
                    break
            sent_ids.append(row.id)
        await asyncio.to_thread(self._mark, sent_ids, failed)
        self.published += len(sent_ids)
        published_counter.add(len(sent_ids))
        if failed is not None:
            failure_counter.add(1)
            self.last_error = failed[1]
            return len(sent_ids), False
        self.last_error = None
        return len(sent_ids), True

    def _fetch_pending(self) -> list[OutboxEvent]:
        with self.database.session() as session:
            statement = (
                select(OutboxEvent)
                .where(col(OutboxEvent.sent_at).is_(None))
                .order_by(col(OutboxEvent.seq))
                .limit(self.batch_size)
            )
            return list(session.exec(statement).all())

    def _mark(self, sent_ids: list[str], failed: tuple[str, str] | None) -> None:
        with self.database.unit_of_work() as session:
            if sent_ids:
                session.execute(update(OutboxEvent).where(col(OutboxEvent.id).in_(sent_ids)).values(sent_at=utcnow()))
            if failed is not None:
                session.execute(
                    update(OutboxEvent)
                    .where(col(OutboxEvent.id) == failed[0])
                    .values(attempts=OutboxEvent.attempts + 1, last_error=failed[1])
                )

    def _purge_sent(self) -> None:
        cutoff = utcnow() - self.retention
        with self.database.unit_of_work() as session:
            session.execute(delete(OutboxEvent).where(col(OutboxEvent.sent_at) < cutoff))
