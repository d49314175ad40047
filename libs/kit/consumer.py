"""Idempotent durable JetStream consumers: apply each event once, ack after commit, dead-letter poison messages.

For every message the handler runs inside one database transaction together with the insertion of
``(consumer, event id)`` into ``processed_message``; the message is acked only after that commit. A redelivered
message (an ack lost, a crash before the ack) finds its id already processed and is acked without being applied
again. A message that keeps failing is retried with a growing delay up to ``max_deliver`` deliveries, then copied to
``deadletter.<consumer>`` (stream ``DEADLETTER``) with the reason, and terminated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind
from pydantic import ValidationError
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col

from contracts import subjects
from contracts.envelope import Envelope
from kit.db import Database
from kit.messaging import Messaging
from kit.telemetry import extract_context

__all__ = ["ConsumerCheckpoint", "DurableConsumer", "MessageHandler", "ProcessedMessage", "dead_letter"]

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)
meter = metrics.get_meter(__name__)
outcome_counter = meter.create_counter(
    "maillage.consumer.messages", unit="{message}", description="messages handled, by consumer and outcome"
)

MessageHandler = Callable[[Session, Envelope], None]
"""Applies one event inside the consumer's transaction. Raise to have the message retried."""


class ProcessedMessage(SQLModel, table=True):
    """Events a consumer has applied, so that a redelivery is a no-op."""

    __tablename__ = "processed_message"

    consumer: str = Field(primary_key=True, max_length=64)
    message_id: str = Field(primary_key=True, max_length=64)
    processed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class ConsumerCheckpoint(SQLModel, table=True):
    """This database has followed consumer ``consumer`` since ``created_at``.

    Absent while the durable consumer exists on the server means the database is new (or was restored from
    nothing): the consumer is then recreated to replay its stream from the start, so the state converges.
    """

    __tablename__ = "consumer_checkpoint"

    consumer: str = Field(primary_key=True, max_length=64)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class DurableConsumer:
    """A durable pull consumer on ``stream`` filtered by ``filter_subject``, applying events with ``handler``."""

    def __init__(
        self,
        *,
        database: Database,
        messaging: Messaging,
        stream: str,
        durable: str,
        filter_subject: str,
        handler: MessageHandler,
        max_deliver: int = 5,
        ack_wait: float = 30.0,
        batch_size: int = 64,
        retry_delay: float = 0.5,
        processed_retention: timedelta = timedelta(days=30),
    ) -> None:
        self.database = database
        self.messaging = messaging
        self.stream = stream
        self.durable = subjects.validate_slug(durable)
        self.filter_subject = filter_subject
        self.handler = handler
        self.max_deliver = max_deliver
        self.ack_wait = ack_wait
        self.batch_size = batch_size
        self.retry_delay = retry_delay
        self.processed_retention = processed_retention
        self.applied = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self.last_error: str | None = None
        self.skip_ack: Callable[[Envelope], bool] | None = None  # test hook: simulate an ack lost after commit
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.durable}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    def _config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=self.filter_subject,
            ack_wait=self.ack_wait,
            # Redelivery is bounded by this consumer (dead letter after max_deliver), not by the server,
            # so that no message is ever dropped silently.
            max_deliver=-1,
            max_ack_pending=1000,
        )

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        await self.messaging.wait_ready()
        js = self.messaging.js
        followed = await asyncio.to_thread(self._has_checkpoint)
        if not followed:
            try:
                await js.delete_consumer(self.stream, self.durable)
                log.info("consumer %s: new database, replaying %s from the start", self.durable, self.stream)
            except NotFoundError:
                pass
        subscription = await js.pull_subscribe(
            self.filter_subject, durable=self.durable, stream=self.stream, config=self._config()
        )
        if not followed:
            await asyncio.to_thread(self._add_checkpoint)
        return subscription

    def _has_checkpoint(self) -> bool:
        with self.database.session() as session:
            return session.get(ConsumerCheckpoint, self.durable) is not None

    def _add_checkpoint(self) -> None:
        with self.database.unit_of_work() as session:
            if session.get(ConsumerCheckpoint, self.durable) is None:
                session.add(ConsumerCheckpoint(consumer=self.durable))

    async def _run(self) -> None:
        subscription: JetStreamContext.PullSubscription | None = None
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            if loop.time() - last_purge > 3600:
                last_purge = loop.time()
                await asyncio.to_thread(self.purge_processed)
            try:
                if subscription is None:
                    subscription = await self._subscribe()
                try:
                    messages = await subscription.fetch(self.batch_size, timeout=1.0)
                except (TimeoutError, NatsTimeoutError):
                    continue
                for msg in messages:
                    await self._handle(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS gone, consumer deleted...: resubscribe later
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("consumer %s: %s", self.durable, self.last_error)
                if subscription is not None:
                    try:
                        await subscription.unsubscribe()
                    except Exception:  # noqa: BLE001
                        pass
                subscription = None
                await asyncio.sleep(0.5)

    async def _handle(self, msg: Msg) -> None:
        delivered = msg.metadata.num_delivered or 1
        try:
            envelope = Envelope.from_bytes(msg.data)
        except ValidationError:
            await self._dead_letter(msg, "envelope.invalid", delivered)
            return
        parent = extract_context(msg.headers)
        with tracer.start_as_current_span(f"process {envelope.type}", context=parent, kind=SpanKind.CONSUMER) as span:
            span.set_attribute("messaging.system", "nats")
            span.set_attribute("messaging.destination.name", msg.subject)
            span.set_attribute("messaging.message.id", envelope.id)
            span.set_attribute("messaging.consumer.group.name", self.durable)
            try:
                applied = await asyncio.to_thread(self._apply, envelope)
            except Exception as exc:  # noqa: BLE001 - any handler failure is retried, then dead-lettered
                span.record_exception(exc)
                self.last_error = f"{type(exc).__name__}: {exc}"
                outcome_counter.add(1, {"consumer": self.durable, "outcome": "failed"})
                if delivered >= self.max_deliver:
                    await self._dead_letter(msg, f"handler.failed: {self.last_error}", delivered)
                else:
                    await msg.nak(delay=self.retry_delay * 2 ** (delivered - 1))
                return
        if applied:
            self.applied += 1
        else:
            self.duplicates += 1
        outcome_counter.add(1, {"consumer": self.durable, "outcome": "applied" if applied else "duplicate"})
        if self.skip_ack is not None and self.skip_ack(envelope):
            return
        await msg.ack()

    def purge_processed(self) -> int:
        """Forget processed marks older than the retention (a redelivery that late is not expected)."""
        cutoff = datetime.now(UTC) - self.processed_retention
        with self.database.unit_of_work() as session:
            result = session.execute(
                delete(ProcessedMessage).where(
                    col(ProcessedMessage.consumer) == self.durable, col(ProcessedMessage.processed_at) < cutoff
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def _apply(self, envelope: Envelope) -> bool:
        """Apply the event in one transaction with its processed mark. False when it was already applied."""
        with self.database.session() as session:
            if session.get(ProcessedMessage, (self.durable, envelope.id)) is not None:
                return False
            self.handler(session, envelope)
            session.add(ProcessedMessage(consumer=self.durable, message_id=envelope.id))
            try:
                session.commit()
            except IntegrityError:
                # Another worker applied it concurrently; our transaction is rolled back whole.
                session.rollback()
                return False
            return True

    async def _dead_letter(self, msg: Msg, reason: str, delivered: int) -> None:
        message_id = msg.headers.get("Nats-Msg-Id") if msg.headers else None
        if await dead_letter(
            self.messaging,
            self.durable,
            msg,
            reason,
            deliveries=delivered,
            message_id=message_id,
            retry_delay=self.retry_delay,
        ):
            self.dead_lettered += 1
            outcome_counter.add(1, {"consumer": self.durable, "outcome": "dead_lettered"})


async def dead_letter(
    messaging: Messaging,
    consumer: str,
    msg: Msg,
    reason: str,
    *,
    deliveries: int,
    message_id: str | None,
    retry_delay: float,
) -> bool:
    """Copy ``msg`` to ``deadletter.<consumer>`` with the reason, then terminate it; True when done.

    When the copy cannot be published, the message is nak'ed instead (it comes back and is tried again): a message
    is never dropped without a trace.
    """
    headers = {
        "Maillage-Original-Subject": msg.subject,
        "Maillage-Consumer": consumer,
        "Maillage-Reason": reason[:500],
        "Maillage-Deliveries": str(deliveries),
    }
    if message_id:
        headers["Nats-Msg-Id"] = f"dl-{consumer}-{message_id}"
    try:
        await messaging.js.publish(subjects.dead_letter(consumer), msg.data, headers=headers, timeout=2)
    except Exception as exc:  # noqa: BLE001 - keep the message: it comes back and is tried again
        log.warning("consumer %s: dead-letter publish failed: %s", consumer, exc)
        await msg.nak(delay=retry_delay)
        return False
    log.error("consumer %s: message on %s dead-lettered (%s)", consumer, msg.subject, reason)
    await msg.term()
    return True
