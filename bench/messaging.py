"""Outbox → JetStream → idempotent durable consumer, against raw JetStream publish → pull consumer.

Both paths run against the same nats-server in the same run. The Maillage path includes what the guarantees cost:
the business transaction with its outbox row (SQLite, WAL), the relay's PubAck wait and mark-as-sent, and the
consumer's transaction with its processed-message row before the ack.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerConfig
from sqlmodel import Session

from bench.report import Result, ms, percentile
from contracts.envelope import Envelope
from kit.consumer import DurableConsumer
from kit.db import Database
from kit.messaging import Messaging
from kit.nats_server import NatsServer
from kit.outbox import OutboxRelay, enqueue
from kit.testing.factories import territory_event

__all__ = ["run"]


async def _raw_latencies(messaging: Messaging, count: int) -> tuple[list[float], float]:
    js = messaging.js
    sub = await js.pull_subscribe(
        "registry.territory.registered.*",
        durable="bench-raw",
        stream="REGISTRY",
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
    )
    latencies: list[float] = []
    payload = Envelope(source="bench", type="bench", data=territory_event().to_data()).to_bytes()
    for i in range(count):
        start = time.perf_counter()
        await js.publish(
            f"registry.territory.registered.{territory_event().siren}",
            payload,
            headers={"Nats-Msg-Id": f"raw-{i}-{start}"},
        )
        msgs = await sub.fetch(1, timeout=5)
        await msgs[0].ack()
        latencies.append(time.perf_counter() - start)
    # throughput: publish a burst, then drain
    start = time.perf_counter()
    for i in range(count):
        await js.publish(
            f"registry.territory.registered.{territory_event().siren}",
            payload,
            headers={"Nats-Msg-Id": f"rawb-{i}-{start}"},
        )
    received = 0
    while received < count:
        for msg in await sub.fetch(min(256, count - received), timeout=5):
            await msg.ack()
            received += 1
    throughput = count / (time.perf_counter() - start)
    await sub.unsubscribe()
    await js.delete_consumer("REGISTRY", "bench-raw")
    return latencies, throughput


async def _outbox_latencies(messaging: Messaging, database: Database, count: int) -> tuple[list[float], float]:
    arrived: dict[str, float] = {}
    got = asyncio.Event()
    loop = asyncio.get_running_loop()

    def handler(_session: Session, envelope: Envelope) -> None:
        arrived[envelope.id] = time.perf_counter()
        loop.call_soon_threadsafe(got.set)

    consumer = DurableConsumer(
        database=database,
        messaging=messaging,
        stream="REGISTRY",
        durable="bench-outbox",
        filter_subject="registry.territory.registered.*",
        handler=handler,
    )
    relay = OutboxRelay(database, messaging, poll_interval=1.0)
    await consumer.start()
    await relay.start()
    latencies: list[float] = []
    try:
        for _ in range(count):
            got.clear()
            start = time.perf_counter()
            with database.unit_of_work() as session:
                event_id = enqueue(session, territory_event(), source="urn:maillage:bench").id
            while event_id not in arrived:
                await asyncio.wait_for(got.wait(), 10)
                got.clear()
            latencies.append(arrived[event_id] - start)
        arrived.clear()
        start = time.perf_counter()
        for _ in range(count):
            with database.unit_of_work() as session:
                enqueue(session, territory_event(), source="urn:maillage:bench")
        while len(arrived) < count:
            await asyncio.wait_for(got.wait(), 30)
            got.clear()
        throughput = count / (time.perf_counter() - start)
    finally:
        await relay.stop()
        await consumer.stop()
    return latencies, throughput


async def _run(count: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="maillage-bench-") as tmp:
        base = Path(tmp)
        server = NatsServer(store_dir=base / "jetstream")
        server.start()
        database = Database(f"sqlite:///{base / 'bench.db'}")
        database.create_all()
        messaging = Messaging(server.url, name="bench")
        await messaging.start()
        await messaging.wait_ready(10)
        try:
            raw, raw_tp = await _raw_latencies(messaging, count)
            outbox, outbox_tp = await _outbox_latencies(messaging, database, count)
        finally:
            await messaging.close()
            database.dispose()
            server.stop()
    rows = []
    for label, q in (("p50", 50), ("p99", 99)):
        base_v, ours = percentile(raw, q), percentile(outbox, q)
        rows.append([f"latency {label}", ms(base_v), ms(ours), f"{ours / base_v:.1f}×"])
    rows.append(
        ["throughput (burst)", f"{raw_tp:,.0f} msg/s", f"{outbox_tp:,.0f} events/s", f"{raw_tp / outbox_tp:.1f}×"]
    )
    return Result(
        name="messaging",
        title="Messaging core: outbox → JetStream → idempotent consumer",
        header=[
            "measure",
            "raw JetStream publish → pull consumer (baseline)",
            "Maillage outbox → durable consumer",
            "ratio",
        ],
        rows=rows,
        notes=[
            f"{count} events one at a time for latency (commit → handler called), then {count} in a burst.",
            "The Maillage path pays two SQLite transactions (business + outbox row; processed-message row) and "
            "the PubAck wait; the relay is woken by the commit, so no polling delay is added.",
        ],
    )


def run(count: int = 1000) -> Result:
    """Run the benchmark and return its result."""
    return asyncio.run(_run(count))
