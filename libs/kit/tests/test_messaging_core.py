"""The messaging core against a real nats-server and real databases (SQLite and PostgreSQL).

Proves: the outbox delivers every event exactly once to a durable consumer across a nats-server kill and restart;
a duplicate publish is dropped by JetStream; a redelivered message is applied once; poison messages are
dead-lettered after bounded redelivery; trace context flows from the writer to the consumer.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from opentelemetry import trace
from sqlmodel import Session, select

from contracts.envelope import Envelope
from kit.consumer import DurableConsumer, ProcessedMessage
from kit.db import Database
from kit.messaging import Messaging
from kit.nats_server import NatsServer
from kit.outbox import OutboxEvent, OutboxRelay, enqueue, pending_count
from kit.testing.factories import random_siren, territory_event

pytestmark = pytest.mark.integration

SOURCE = "urn:maillage:tests:kit"


async def eventually(check: Callable[[], bool | Awaitable[bool]], *, timeout: float = 20.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


def write_events(database: Database, count: int) -> list[str]:
    """Write ``count`` events, each in its own transaction as a request would; returns their ids."""
    ids = []
    for _ in range(count):
        with database.unit_of_work() as session:
            ids.append(enqueue(session, territory_event(), source=SOURCE).id)
    return ids


class Recorder:
    """A handler that records which event ids it applied."""

    def __init__(self, fail_times: int = 0) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_times = fail_times

    def __call__(self, session: Session, envelope: Envelope) -> None:
        self.calls[envelope.id] += 1
        if self.calls[envelope.id] <= self.fail_times:
            raise RuntimeError("handler failure for the test")


async def connect(server: NatsServer) -> Messaging:
    messaging = Messaging(server.url, name="tests-core")
    await messaging.start()
    await messaging.wait_ready(timeout=10)
    return messaging


async def test_outbox_exactly_once_across_nats_kill_and_restart(own_nats_server: NatsServer, database: Database):
    messaging = await connect(own_nats_server)
    recorder = Recorder()
    consumer = DurableConsumer(
        database=database,
        messaging=messaging,
        stream="REGISTRY",
        durable="core-exactly-once",
        filter_subject="registry.territory.registered.*",
        handler=recorder,
    )
    relay = OutboxRelay(database, messaging, poll_interval=0.1)
    await consumer.start()
    await relay.start()
    try:
        before = write_events(database, 20)
        await eventually(lambda: len(recorder.calls) == 20, what="the first 20 events")

        # Written while nats-server is dead: the writes succeed and the rows wait in the outbox.
        own_nats_server.kill()
        await eventually(lambda: not messaging.connected, what="the disconnection")
        during = write_events(database, 30)
        await asyncio.sleep(0.5)
        assert pending_count(database) == 30

        own_nats_server.start()
        await eventually(lambda: pending_count(database) == 0, what="the outbox to drain", timeout=30)
        await eventually(lambda: len(recorder.calls) == 50, what="all 50 events applied", timeout=30)
        await asyncio.sleep(0.5)  # let any late redelivery show up
    finally:
        await relay.stop()
        await consumer.stop()
        await messaging.close()

    assert set(recorder.calls) == set(before + during)
    assert all(count == 1 for count in recorder.calls.values()), recorder.calls.most_common(3)
    with database.session() as session:
        processed = session.exec(select(ProcessedMessage).where(ProcessedMessage.consumer == "core-exactly-once"))
        assert {row.message_id for row in processed} == set(before + during)


async def test_crash_between_puback_and_mark_is_deduplicated(
    own_nats_server: NatsServer, database: Database, monkeypatch: pytest.MonkeyPatch
):
    messaging = await connect(own_nats_server)
    ids = write_events(database, 5)
    relay = OutboxRelay(database, messaging)

    def crash(*_: object) -> None:
        raise RuntimeError("relay died after the PubAck, before marking the rows sent")

    monkeypatch.setattr(relay, "_mark", crash)
    with pytest.raises(RuntimeError):
        await relay.drain_once()
    assert pending_count(database) == 5  # nothing marked: the next relay publishes them all again
    monkeypatch.undo()

    second = OutboxRelay(database, messaging)
    assert await second.drain_once() == (5, True)
    assert pending_count(database) == 0

    stream = await messaging.js.stream_info("REGISTRY")
    assert stream.state.messages == 5, "JetStream must drop the re-published duplicates"
    recorder = Recorder()
    consumer = DurableConsumer(
        database=database,
        messaging=messaging,
        stream="REGISTRY",
        durable="core-dedup",
        filter_subject="registry.>",
        handler=recorder,
    )
    await consumer.start()
    try:
        await eventually(lambda: len(recorder.calls) == 5, what="5 events")
        await asyncio.sleep(0.3)
    finally:
        await consumer.stop()
        await messaging.close()
    assert sorted(recorder.calls) == sorted(ids)
    assert set(recorder.calls.values()) == {1}


async def test_redelivered_message_is_applied_once(messaging: Messaging, database: Database):
    siren = random_siren()
    recorder = Recorder()
    consumer = DurableConsumer(
        database=database,
        messaging=messaging,
        stream="REGISTRY",
        durable=f"core-redelivery-{siren}",
        filter_subject=f"registry.territory.registered.{siren}",
        handler=recorder,
        ack_wait=1.0,
    )
    # The first delivery is applied and committed, but its ack is "lost": JetStream redelivers after ack_wait.
    acks_skipped: list[str] = []

    def lose_first_ack(envelope: Envelope) -> bool:
        if envelope.id not in acks_skipped:
            acks_skipped.append(envelope.id)
            return True
        return False

    consumer.skip_ack = lose_first_ack
    with database.unit_of_work() as session:
        event_id = enqueue(session, territory_event(siren), source=SOURCE).id
    await OutboxRelay(database, messaging).drain_once()
    await consumer.start()
    try:
        await eventually(lambda: consumer.duplicates >= 1, what="the redelivery", timeout=15)
    finally:
        await consumer.stop()
    assert recorder.calls == Counter({event_id: 1})
    assert consumer.applied == 1


async def test_failing_message_is_retried_then_dead_lettered(messaging: Messaging, database: Database):
    siren = random_siren()
    durable = f"core-poison-{siren}"
    recorder = Recorder(fail_times=100)
    consumer = DurableConsumer(
        database=database,
        messaging=messaging,
        stream="REGISTRY",
        durable=durable,
        filter_subject=f"registry.territory.registered.{siren}",
        handler=recorder,
        max_deliver=3,
        retry_delay=0.05,
    )
    with database.unit_of_work() as session:
        event_id = enqueue(session, territory_event(siren), source=SOURCE).id
    await OutboxRelay(database, messaging).drain_once()
    await consumer.start()
    try:
        await eventually(lambda: consumer.dead_lettered == 1, what="the dead letter", timeout=15)
    finally:
        await consumer.stop()
    assert recorder.calls[event_id] == 3
    dead = await messaging.js.get_last_msg("DEADLETTER", f"deadletter.{durable}")
    assert Envelope.from_bytes(dead.data).id == event_id
    assert dead.headers is not None
    assert dead.headers["Maillage-Reason"].startswith("handler.failed")
    assert dead.headers["Maillage-Deliveries"] == "3"
    with database.session() as session:
        assert session.get(ProcessedMessage, (durable, event_id)) is None


async def test_malformed_envelope_goes_straight_to_dead_letter(messaging: Messaging, database: Database):
    siren = random_siren()
    durable = f"core-malformed-{siren}"
    recorder = Recorder()
    consumer = DurableConsumer(
        database=database,
        messaging=messaging,
        stream="REGISTRY",
        durable=durable,
        filter_subject=f"registry.territory.registered.{siren}",
        handler=recorder,
    )
    await messaging.js.publish(f"registry.territory.registered.{siren}", b"\xff not json")
    await consumer.start()
    try:
        await eventually(lambda: consumer.dead_lettered == 1, what="the dead letter")
    finally:
        await consumer.stop()
    assert not recorder.calls
    dead = await messaging.js.get_last_msg("DEADLETTER", f"deadletter.{durable}")
    assert dead.headers is not None and dead.headers["Maillage-Reason"] == "envelope.invalid"


async def test_rolled_back_transaction_leaves_no_event(database: Database):
    with pytest.raises(RuntimeError), database.unit_of_work() as session:
        enqueue(session, territory_event(), source=SOURCE)
        raise RuntimeError("the business change failed")
    with database.session() as session:
        assert session.exec(select(OutboxEvent)).all() == []


async def test_trace_context_flows_from_writer_to_consumer(messaging: Messaging, database: Database, span_exporter):
    siren = random_siren()
    consumer = DurableConsumer(
        database=database,
        messaging=messaging,
        stream="REGISTRY",
        durable=f"core-trace-{siren}",
        filter_subject=f"registry.territory.registered.{siren}",
        handler=Recorder(),
    )
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("http request") as request_span, database.unit_of_work() as session:
        envelope = enqueue(session, territory_event(siren), source=SOURCE)
    assert envelope.traceparent is not None
    await OutboxRelay(database, messaging).drain_once()
    await consumer.start()
    try:
        await eventually(lambda: consumer.applied == 1, what="the event")
    finally:
        await consumer.stop()
    trace_id = request_span.get_span_context().trace_id
    spans = {span.name: span for span in span_exporter.get_finished_spans() if span.context.trace_id == trace_id}
    publish = spans[f"publish {envelope.type}"]
    process = spans[f"process {envelope.type}"]
    assert publish.parent is not None and publish.parent.span_id == request_span.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == publish.context.span_id


def metric_total(reader, name: str, **attributes: str) -> float:
    total = 0.0
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        if all(point.attributes.get(k) == v for k, v in attributes.items()):
                            total += point.value
    return total


async def test_relay_and_consumer_report_metrics(messaging: Messaging, database: Database, metric_reader):
    siren = random_siren()
    durable = f"core-metrics-{siren}"
    consumer = DurableConsumer(
        database=database,
        messaging=messaging,
        stream="REGISTRY",
        durable=durable,
        filter_subject=f"registry.territory.registered.{siren}",
        handler=Recorder(),
    )
    published_before = metric_total(metric_reader, "maillage.outbox.published")
    with database.unit_of_work() as session:
        enqueue(session, territory_event(siren), source=SOURCE)
    await OutboxRelay(database, messaging).drain_once()
    await consumer.start()
    try:
        await eventually(lambda: consumer.applied == 1, what="the event")
    finally:
        await consumer.stop()
    assert metric_total(metric_reader, "maillage.outbox.published") == published_before + 1
    assert metric_total(metric_reader, "maillage.consumer.messages", consumer=durable, outcome="applied") == 1


async def test_old_processed_marks_are_purged(messaging: Messaging, database: Database):
    from datetime import UTC, datetime, timedelta

    consumer = DurableConsumer(
        database=database,
        messaging=messaging,
        stream="REGISTRY",
        durable="core-purge",
        filter_subject="registry.territory.registered.000000000",
        handler=Recorder(),
        processed_retention=timedelta(days=30),
    )
    with database.unit_of_work() as session:
        session.add(
            ProcessedMessage(
                consumer="core-purge", message_id="old", processed_at=datetime.now(UTC) - timedelta(days=31)
            )
        )
        session.add(ProcessedMessage(consumer="core-purge", message_id="recent"))
        session.add(
            ProcessedMessage(consumer="other", message_id="old", processed_at=datetime.now(UTC) - timedelta(days=31))
        )
    assert consumer.purge_processed() == 1
    with database.session() as session:
        left = {(row.consumer, row.message_id) for row in session.exec(select(ProcessedMessage))}
    assert left == {("core-purge", "recent"), ("other", "old")}


async def test_new_database_replays_the_stream_from_the_start(messaging: Messaging, database: Database, tmp_path):
    siren = random_siren()
    durable = f"core-replay-{siren}"

    def consumer_on(db: Database, recorder: Recorder) -> DurableConsumer:
        return DurableConsumer(
            database=db,
            messaging=messaging,
            stream="REGISTRY",
            durable=durable,
            filter_subject=f"registry.territory.registered.{siren}",
            handler=recorder,
        )

    for population in (1, 2, 3):
        with database.unit_of_work() as session:
            enqueue(session, territory_event(siren, population=population), source=SOURCE)
    await OutboxRelay(database, messaging).drain_once()
    first = Recorder()
    consumer = consumer_on(database, first)
    await consumer.start()
    try:
        await eventually(lambda: consumer.applied == 3, what="3 events on the first database")
    finally:
        await consumer.stop()

    # Same durable name, a database that has never seen it (lost disk, new replica): everything is replayed.
    fresh = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    fresh.create_all()
    second = Recorder()
    replaying = consumer_on(fresh, second)
    await replaying.start()
    try:
        await eventually(lambda: replaying.applied == 3, what="the replay on the new database")
    finally:
        await replaying.stop()
        fresh.dispose()
    assert set(second.calls) == set(first.calls)

    # The first database resumes where it stopped: nothing is applied twice.
    again = Recorder()
    resumed = consumer_on(database, again)
    await resumed.start()
    await asyncio.sleep(1.5)
    await resumed.stop()
    assert not again.calls
