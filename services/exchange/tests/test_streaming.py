"""Streaming ingestion against a real nats-server: batches, ack after commit, redelivery, dedup, dead letters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from contracts.datasets import TableSchema
from exchange import streaming
from exchange.storage import Storage
from exchange.streaming import (
    StreamingIngestor,
    ingest_subject,
    natural_key,
    parse_ingest_subject,
    publish_readings,
)
from kit.messaging import Messaging
from kit.nats_server import NatsServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
MEASURE_SCHEMA = ROOT / "contracts" / "standards" / "schema-comptage-mobilites" / "measure" / "schema.json"
SIREN = "242100410"
OTHER_SIREN = "242500361"
SLUG = "comptages-velo"
DURABLE = "exchange-ingest"


def reading(hour: int, count: Any = 3, channel: str = "353226361") -> dict[str, Any]:
    return {
        "channel_id": channel,
        "counter_id": "CPTTEST2031",
        "start_datetime": f"2024-05-01T{hour:02d}:00:00+02:00",
        "end_datetime": f"2024-05-01T{hour + 1:02d}:00:00+02:00",
        "count": count,
    }


@pytest.fixture
def schema() -> TableSchema:
    return TableSchema.from_standard(json.loads(MEASURE_SCHEMA.read_text(encoding="utf-8")))


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(tmp_path / "data")


@pytest.fixture
async def bus(own_nats_server: NatsServer) -> AsyncIterator[Messaging]:
    """A connected Messaging with the federation's streams (INGEST among them)."""
    client = Messaging(own_nats_server.url, name="tests")
    await client.start()
    await client.wait_ready(timeout=10)
    yield client
    await client.close()


def ingestor(storage: Storage, bus: Messaging, schema: TableSchema, **options: Any) -> StreamingIngestor:
    def lookup(siren: str, slug: str) -> TableSchema | None:
        return schema if slug == SLUG else None

    settings: dict[str, Any] = {"batch_size": 100, "batch_seconds": 0.5, "retry_delay": 0.05, **options}
    return StreamingIngestor(storage=storage, messaging=bus, schemas=lookup, durable=DURABLE, **settings)


def stored(storage: Storage) -> list[tuple[Any, ...]]:
    version = storage.current(SIREN, SLUG)
    if version is None:
        return []
    con = duckdb.connect(str(version.duckdb_path), read_only=True)
    try:
        return con.execute("SELECT channel_id, start_datetime, count FROM rows ORDER BY 2").fetchall()
    finally:
        con.close()


async def dead_letters(bus: Messaging) -> list[tuple[bytes, dict[str, str]]]:
    sub = await bus.js.pull_subscribe(
        f"deadletter.{DURABLE}", stream="DEADLETTER", config=ConsumerConfig(ack_policy=AckPolicy.NONE)
    )
    found: list[tuple[bytes, dict[str, str]]] = []
    try:
        while True:
            for msg in await sub.fetch(100, timeout=0.5):
                found.append((msg.data, dict(msg.headers or {})))
    except (TimeoutError, Exception):  # noqa: BLE001 - nats' TimeoutError: nothing more
        pass
    await sub.unsubscribe()
    return found


def test_subjects_and_keys(schema: TableSchema) -> None:
    assert ingest_subject(SIREN, SLUG) == "exchange.ingest.242100410.comptages-velo"
    assert parse_ingest_subject("exchange.ingest.242100410.comptages-velo") == (SIREN, SLUG)
    for bad in ("exchange.ingest.242100411.x", "exchange.ingest.242100410.Bad", "exchange.ingest.242100410"):
        with pytest.raises(ValueError):
            parse_ingest_subject(bad)
    with pytest.raises(ValueError):
        ingest_subject("../x", SLUG)
    assert natural_key(schema) == ["channel_id", "start_datetime"]


async def test_batches_are_committed_then_acked_and_duplicates_never_become_rows(
    storage: Storage, bus: Messaging, schema: TableSchema
) -> None:
    for hour in range(3):
        await publish_readings(bus.js, SIREN, SLUG, reading(hour), f"m{hour}")
    # The publisher retried m0: JetStream's duplicate window stores it once.
    ack = await bus.js.publish(
        ingest_subject(SIREN, SLUG), json.dumps(reading(0)).encode(), headers={"Nats-Msg-Id": "m0"}
    )
    assert ack.duplicate

    consumer = ingestor(storage, bus, schema)
    result = await consumer.run_once()
    assert (result.messages, result.applied, result.dead_lettered) == (3, 3, 0)
    assert result.versions == {f"{SIREN}/{SLUG}": 1} and result.rows_added == 3
    assert len(stored(storage)) == 3

    # The same readings re-sent under new message ids (a sensor gateway restarted) add nothing; a new one is added.
    await publish_readings(bus.js, SIREN, SLUG, [reading(0), reading(1)], "again-0-1")
    await publish_readings(bus.js, SIREN, SLUG, reading(3, count=7.5), "m3")
    result = await consumer.run_once()
    assert (result.applied, result.rows_added) == (2, 1)
    assert [row[2] for row in stored(storage)] == [3.0, 3.0, 3.0, 7.5]
    version = storage.current(SIREN, SLUG)
    assert version is not None and version.version == 2
    assert version.ingest_state()["messages"][DURABLE] == ["m0", "m1", "m2", "again-0-1", "m3"]

    # Nothing pending: an empty batch commits nothing.
    assert (await consumer.run_once()).messages == 0
    await consumer.stop()


async def test_an_ack_lost_after_the_commit_is_redelivered_and_not_applied_twice(
    storage: Storage, bus: Messaging, schema: TableSchema
) -> None:
    for hour in range(3):
        await publish_readings(bus.js, SIREN, SLUG, reading(hour), f"m{hour}")
    consumer = ingestor(storage, bus, schema, ack_wait=1.0)
    consumer.skip_ack = lambda msg_id: True  # the process dies right after the commit, before acking
    result = await consumer.run_once()
    assert result.applied == 3 and len(stored(storage)) == 3
    await consumer.stop()

    restarted = ingestor(storage, bus, schema, ack_wait=1.0, batch_seconds=0.5)
    totals = {"messages": 0, "duplicates": 0, "applied": 0}
    for _ in range(10):  # the server redelivers after ack_wait
        result = await restarted.run_once()
        assert result.versions == {}
        for name in totals:
            totals[name] += getattr(result, name)
        if totals["messages"] >= 3:
            break
    assert totals == {"messages": 3, "duplicates": 3, "applied": 0}
    current = storage.current(SIREN, SLUG)
    assert current is not None and current.version == 1 and len(stored(storage)) == 3
    assert (await restarted.run_once()).messages == 0  # acked this time
    await restarted.stop()


async def test_a_crash_before_the_commit_redelivers(
    storage: Storage, bus: Messaging, schema: TableSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    for hour in range(4):
        await publish_readings(bus.js, SIREN, SLUG, reading(hour), f"m{hour}")
    real = streaming.ingest_table
    calls = 0

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(streaming, "ingest_table", failing_once)
    consumer = ingestor(storage, bus, schema, batch_seconds=2.0)
    result = await consumer.run_once()
    assert (result.retried, result.applied) == (4, 0)
    assert storage.current(SIREN, SLUG) is None and "disk full" in (consumer.last_error or "")

    result = await consumer.run_once()
    assert (result.messages, result.applied, result.rows_added) == (4, 4, 4)
    assert len(stored(storage)) == 4
    await consumer.stop()


async def test_invalid_messages_are_dead_lettered_with_the_reason(
    storage: Storage, bus: Messaging, schema: TableSchema
) -> None:
    await publish_readings(bus.js, SIREN, SLUG, reading(0), "good")
    await publish_readings(bus.js, SIREN, SLUG, reading(1, count="beaucoup"), "bad-type")
    await bus.js.publish(ingest_subject(SIREN, SLUG), b"{not json", headers={"Nats-Msg-Id": "bad-json"})
    await publish_readings(bus.js, SIREN, SLUG, {**reading(2), "colour": "red"}, "bad-field")
    # One bad reading in a message keeps the whole message out.
    await publish_readings(bus.js, SIREN, SLUG, [reading(3), {**reading(4), "channel_id": None}], "half-bad")
    envelope = {
        "specversion": "1.0",
        "id": "e1",
        "source": "urn:sensor",
        "type": "t",
        "data": {"readings": [reading(5)]},
    }
    await bus.js.publish(ingest_subject(SIREN, SLUG), json.dumps(envelope).encode(), headers={"Nats-Msg-Id": "env"})
    await publish_readings(bus.js, SIREN, "inconnu", reading(6), "unknown-dataset")
    await bus.js.publish("exchange.ingest.242100410.Bad-Slug", b"{}", headers={"Nats-Msg-Id": "bad-subject"})

    consumer = ingestor(storage, bus, schema)
    result = await consumer.run_once()
    assert (result.messages, result.applied, result.dead_lettered) == (8, 2, 6)
    assert [row[1].hour for row in stored(storage)] == [22, 3]  # readings 0 and 5, in UTC

    letters = await dead_letters(bus)
    reasons = {headers["Nats-Msg-Id"]: headers["Maillage-Reason"] for _, headers in letters}
    assert set(reasons) == {f"dl-{DURABLE}-{m}" for m in ("bad-type", "bad-json", "bad-field", "half-bad")} | {
        f"dl-{DURABLE}-unknown-dataset",
        f"dl-{DURABLE}-bad-subject",
    }
    assert reasons[f"dl-{DURABLE}-bad-type"].startswith("reading.invalid: type-error: field count:")
    assert reasons[f"dl-{DURABLE}-bad-json"].startswith("message.invalid_json")
    assert reasons[f"dl-{DURABLE}-bad-field"].startswith("message.unknown_field: colour")
    assert "field channel_id: a value is required" in reasons[f"dl-{DURABLE}-half-bad"]
    assert reasons[f"dl-{DURABLE}-unknown-dataset"].startswith("dataset.unknown")
    assert all(h["Maillage-Consumer"] == DURABLE for _, h in letters)
    assert (await consumer.run_once()).messages == 0  # terminated, not redelivered
    await consumer.stop()


async def test_the_background_consumer_follows_its_territories_only(
    storage: Storage, bus: Messaging, schema: TableSchema
) -> None:
    consumer = ingestor(storage, bus, schema, territories=[SIREN], batch_seconds=0.2)
    await consumer.start()
    try:
        for hour in range(10):
            await publish_readings(bus.js, SIREN, SLUG, reading(hour), f"m{hour}")
        await publish_readings(bus.js, OTHER_SIREN, SLUG, reading(0), "elsewhere")
        for _ in range(100):
            if len(stored(storage)) == 10:
                break
            await asyncio.sleep(0.1)
        assert len(stored(storage)) == 10
        assert storage.current(OTHER_SIREN, SLUG) is None
    finally:
        await consumer.stop()
    info = await bus.js.consumer_info("INGEST", DURABLE)
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_batch_of_invalid_readings_creates_no_version(
    storage: Storage, bus: Messaging, schema: TableSchema
) -> None:
    await publish_readings(bus.js, SIREN, SLUG, reading(0, count="n/a"), "bad-1")
    await publish_readings(bus.js, SIREN, SLUG, {**reading(1), "start_datetime": "hier"}, "bad-2")
    consumer = ingestor(storage, bus, schema)
    result = await consumer.run_once()
    assert (result.messages, result.dead_lettered, result.versions) == (2, 2, {})
    assert storage.current(SIREN, SLUG) is None
    assert not any(p.name.startswith(".tmp-") for p in storage.dataset_dir(SIREN, SLUG).iterdir())
    await consumer.stop()
