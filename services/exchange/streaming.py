"""Streaming ingestion: sensor readings published on JetStream, batched into new appended versions.

A sensor (or its gateway) publishes readings as JSON on ``exchange.ingest.<siren>.<slug>`` (stream ``INGEST``),
ideally with a ``Nats-Msg-Id``. A message holds one reading (an object whose keys are the schema's fields), a list
of readings, or a CloudEvents envelope whose ``data`` is either (or ``{"readings": [...]}``).

A durable pull consumer fetches up to ``batch_size`` messages or waits ``batch_seconds``, groups them by dataset
and, per dataset, validates every reading and commits the valid messages as one new version. Delivery is
at-least-once with deduplication on two levels:

- the ids of committed messages (``Nats-Msg-Id``, else the stream sequence) are recorded *in the version itself*
  (``ingest-state.json``), so a redelivery after a crash finds them and is acked without being applied again;
- rows whose natural key (the primary key, or ``(channel_id, start_datetime)`` for the bike-counter measures) is
  already present are skipped, so a reading re-sent under another message id never becomes a second row.

Messages are acked only after the commit: a crash before it means a redelivery. A message with an invalid reading
is left out whole, copied to ``deadletter.<consumer>`` with the reason, and terminated. A batch that cannot be
committed (disk full, a long concurrent ingest) is retried with a growing delay, then dead-lettered.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts import subjects
from contracts.datasets import TableSchema
from contracts.identifiers import SubjectTokenError, validate_siren, validate_slug
from exchange.ingest import IngestError, TableIngestResult, ingest_table
from exchange.storage import DatasetVersion, Storage
from kit.consumer import dead_letter
from kit.messaging import Messaging

__all__ = [
    "INGEST_STREAM",
    "INGEST_SUBJECT_PREFIX",
    "BatchResult",
    "SchemaLookup",
    "StreamingIngestor",
    "ingest_subject",
    "natural_key",
    "parse_ingest_subject",
    "publish_readings",
]

log = logging.getLogger(__name__)

INGEST_STREAM = "INGEST"
INGEST_SUBJECT_PREFIX = "exchange.ingest"
# The bike-counter measure schema has no primaryKey; one channel counts one period once.
_MEASURE_KEY = ("channel_id", "start_datetime")
_ENVELOPE_KEYS = {"specversion", "data"}

SchemaLookup = Callable[[str, str], TableSchema | None]
"""(SIREN, slug) -> the dataset's Table Schema, or None when this node does not host that dataset."""


def ingest_subject(siren: str, slug: str) -> str:
    """``exchange.ingest.<siren>.<slug>``, both tokens validated."""
    return subjects.exchange_ingest(siren, slug)


def parse_ingest_subject(subject: str) -> tuple[str, str]:
    """(SIREN, slug) of an ingestion subject; SubjectTokenError when it is not one."""
    parts = subject.split(".")
    if len(parts) != 4 or ".".join(parts[:2]) != INGEST_SUBJECT_PREFIX:
        raise SubjectTokenError(f"{subject!r} is not exchange.ingest.<siren>.<slug>")
    return validate_siren(parts[2]), validate_slug(parts[3])


def natural_key(schema: TableSchema) -> list[str] | None:
    """The key deduplicating readings: the primary key, else (channel_id, start_datetime) when both exist."""
    if schema.primary_key:
        return list(schema.primary_key)
    names = {f.name for f in schema.fields}
    if all(name in names for name in _MEASURE_KEY):
        return list(_MEASURE_KEY)
    return None


async def publish_readings(
    js: JetStreamContext, siren: str, slug: str, readings: Mapping[str, Any] | Sequence[Mapping[str, Any]], msg_id: str
) -> int:
    """Publish readings for ingestion with ``Nats-Msg-Id`` = ``msg_id``; the stream sequence."""
    payload = json.dumps(readings, separators=(",", ":"), default=str).encode("utf-8")
    ack = await js.publish(ingest_subject(siren, slug), payload, headers={"Nats-Msg-Id": msg_id}, timeout=5)
    return int(ack.seq)


@dataclass
class BatchResult:
    """What one batch did."""

    messages: int = 0
    applied: int = 0  # messages whose readings are now committed (rows skipped as duplicates included)
    duplicates: int = 0  # messages already committed before (acked without being applied)
    dead_lettered: int = 0
    retried: int = 0  # messages nak'ed for a later retry (the commit failed)
    versions: dict[str, int] = field(default_factory=dict)  # "<siren>/<slug>" -> committed version
    rows_added: int = 0


@dataclass
class _Pending:
    msg: Msg
    msg_id: str
    readings: list[dict[str, Any]] = field(default_factory=list)


class StreamingIngestor:
    """The durable pull consumer turning ingestion messages into dataset versions."""

    def __init__(
        self,
        *,
        storage: Storage,
        messaging: Messaging,
        schemas: SchemaLookup,
        territories: Collection[str] | None = None,
        durable: str = "exchange-ingest",
        stream: str = INGEST_STREAM,
        batch_size: int = 500,
        batch_seconds: float = 1.0,
        ack_wait: float = 120.0,
        max_deliver: int = 5,
        retry_delay: float = 1.0,
        remembered_ids: int = 50_000,
    ) -> None:
        if batch_seconds * 2 > ack_wait:
            # Otherwise the server redelivers messages still waiting in the batch being gathered.
            raise ValueError("batch_seconds must be at most half of ack_wait")
        self.storage = storage
        self.messaging = messaging
        self.schemas = schemas
        self.territories = sorted(validate_siren(s) for s in territories) if territories is not None else None
        if self.territories == []:
            # An empty filter list would make the server deliver every territory's messages.
            raise ValueError("territories is empty: give the SIRENs this node hosts, or None for all")
        self.durable = subjects.validate_slug(durable)
        self.stream = stream
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.retry_delay = retry_delay
        self.remembered_ids = remembered_ids
        self.applied = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self.last_error: str | None = None
        self.skip_ack: Callable[[str], bool] | None = None  # test hook: simulate an ack lost after the commit
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Consume in the background until :meth:`stop`."""
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name=f"ingest-{self.durable}")

    async def stop(self) -> None:
        """Stop consuming; messages fetched but not acked are redelivered later."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
            self._task = None
        await self._unsubscribe()

    def _config(self) -> ConsumerConfig:
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            # Redelivery is bounded here (dead letter after max_deliver), never dropped silently by the server.
            max_deliver=-1,
            max_ack_pending=max(1000, self.batch_size * 2),
        )
        if self.territories is not None:
            config.filter_subjects = [f"{INGEST_SUBJECT_PREFIX}.{siren}.*" for siren in self.territories]
        else:
            config.filter_subject = f"{INGEST_SUBJECT_PREFIX}.>"
        return config

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        if self._subscription is None:
            await self.messaging.wait_ready()
            config = self._config()
            self._subscription = await self.messaging.js.pull_subscribe(
                config.filter_subject or "", durable=self.durable, stream=self.stream, config=config
            )
        return self._subscription

    async def _unsubscribe(self) -> None:
        if self._subscription is not None:
            try:
                await self._subscription.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be gone already
                pass
            self._subscription = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS gone, consumer deleted...: resubscribe later
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("ingest consumer %s: %s", self.durable, self.last_error)
                await self._unsubscribe()
                await asyncio.sleep(0.5)

    # -- one batch -----------------------------------------------------------------------------------------------

    async def run_once(self) -> BatchResult:
        """Fetch one batch (``batch_size`` messages or ``batch_seconds``), commit it, ack it."""
        subscription = await self._subscribe()
        messages = await self._fetch(subscription)
        result = BatchResult(messages=len(messages))
        by_dataset: dict[tuple[str, str], list[Msg]] = {}
        for msg in messages:
            try:
                by_dataset.setdefault(parse_ingest_subject(msg.subject), []).append(msg)
            except SubjectTokenError:
                await self._dead_letter(msg, "subject.invalid: not exchange.ingest.<siren>.<slug>", result)
        for (siren, slug), group in by_dataset.items():
            await self._process(siren, slug, group, result)
        self.applied += result.applied
        self.duplicates += result.duplicates
        self.dead_lettered += result.dead_lettered
        return result

    async def _fetch(self, subscription: JetStreamContext.PullSubscription) -> list[Msg]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_seconds
        batch: list[Msg] = []
        while len(batch) < self.batch_size and not self._stop.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0.01:
                break
            try:
                batch.extend(await subscription.fetch(self.batch_size - len(batch), timeout=remaining))
            except (TimeoutError, NatsTimeoutError):
                break
        return batch

    async def _process(self, siren: str, slug: str, msgs: list[Msg], result: BatchResult) -> None:
        schema = self.schemas(siren, slug)
        if schema is None:
            for msg in msgs:
                await self._dead_letter(msg, f"dataset.unknown: {siren}/{slug} is not hosted here", result)
            return
        key = natural_key(schema)
        if key is None:
            for msg in msgs:
                reason = "dataset.no_key: streaming needs a primary key to deduplicate readings"
                await self._dead_letter(msg, reason, result)
            return
        current = await asyncio.to_thread(self.storage.current, siren, slug)
        committed = set(self._remembered(current))
        pending: list[_Pending] = []
        seen_in_batch: set[str] = set()
        names = [f.name for f in schema.fields]
        for msg in msgs:
            msg_id = _message_id(msg)
            if msg_id in committed or msg_id in seen_in_batch:
                result.duplicates += 1
                await self._ack(msg, msg_id)
                continue
            seen_in_batch.add(msg_id)
            readings, problem = _readings(msg.data, names)
            if problem is not None:
                await self._dead_letter(msg, problem, result)
                continue
            pending.append(_Pending(msg=msg, msg_id=msg_id, readings=readings))
        if not pending:
            return
        table, groups = _table(pending, names)
        ids = [p.msg_id for p in pending]

        def state(previous: DatasetVersion | None, rejected: set[int]) -> dict[str, Any]:
            return self._record(previous, [ids[i] for i in range(len(ids)) if i not in rejected])

        try:
            outcome: TableIngestResult = await asyncio.to_thread(
                ingest_table,
                self.storage,
                siren,
                slug,
                schema,
                table,
                mode="append",
                duplicates="skip",
                key=key,
                groups=groups,
                drop_invalid=True,
                state=state,
                lock_timeout=self.ack_wait / 2,
            )
        except Exception as exc:  # noqa: BLE001 - nothing committed: every message comes back later
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("ingest of %s/%s failed, will retry: %s", siren, slug, self.last_error)
            for item in pending:
                delivered = item.msg.metadata.num_delivered or 1
                if delivered >= self.max_deliver:
                    await self._dead_letter(item.msg, f"ingest.failed: {self.last_error}", result)
                else:
                    result.retried += 1
                    await item.msg.nak(delay=self.retry_delay * 2 ** (delivered - 1))
            return
        report = outcome.report
        if report.version is not None:
            result.versions[f"{siren}/{slug}"] = report.version
        result.rows_added += report.rows_added
        for index, item in enumerate(pending):
            errors = outcome.rejected.get(index)
            if errors is not None:
                await self._dead_letter(item.msg, _reason(errors), result)
            else:
                result.applied += 1
                await self._ack(item.msg, item.msg_id)

    # -- dedup state ---------------------------------------------------------------------------------------------

    def _remembered(self, version: DatasetVersion | None) -> list[str]:
        if version is None:
            return []
        consumers = version.ingest_state().get("messages", {})
        ids = consumers.get(self.durable, []) if isinstance(consumers, dict) else []
        return [str(i) for i in ids] if isinstance(ids, list) else []

    def _record(self, previous: DatasetVersion | None, ids: Iterable[str]) -> dict[str, Any]:
        """The previous version's state with ``ids`` added (the most recent ``remembered_ids`` kept)."""
        state = previous.ingest_state() if previous is not None else {}
        consumers = state.get("messages")
        if not isinstance(consumers, dict):
            consumers = {}
        remembered = [*self._remembered(previous), *ids][-self.remembered_ids :]
        consumers[self.durable] = remembered
        state["messages"] = consumers
        return state

    # -- acks and dead letters -----------------------------------------------------------------------------------

    async def _ack(self, msg: Msg, msg_id: str) -> None:
        if self.skip_ack is not None and self.skip_ack(msg_id):
            return
        await msg.ack()

    async def _dead_letter(self, msg: Msg, reason: str, result: BatchResult) -> None:
        if await dead_letter(
            self.messaging,
            self.durable,
            msg,
            reason,
            deliveries=msg.metadata.num_delivered or 1,
            message_id=_message_id(msg),
            retry_delay=self.retry_delay,
        ):
            result.dead_lettered += 1
        else:
            result.retried += 1


def _message_id(msg: Msg) -> str:
    if msg.headers and msg.headers.get("Nats-Msg-Id"):
        return str(msg.headers["Nats-Msg-Id"])[:128]
    # Without a publisher id, the stream sequence still names this stored message across redeliveries.
    return f"seq-{msg.metadata.sequence.stream}"


def _readings(data: bytes, names: Sequence[str]) -> tuple[list[dict[str, Any]], str | None]:
    """The readings of a message body, or the reason it holds none. Values are never quoted in reasons."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return [], "message.invalid_json: the body is not UTF-8 JSON"
    if isinstance(body, dict) and _ENVELOPE_KEYS <= body.keys():
        body = body["data"]
    if isinstance(body, dict) and set(body) == {"readings"}:
        body = body["readings"]
    items = body if isinstance(body, list) else [body]
    if not items:
        return [], "message.empty: no reading"
    known = set(names)
    for item in items:
        if not isinstance(item, dict):
            return [], "message.not_readings: a reading is a JSON object whose keys are the dataset's fields"
        unknown = sorted(k for k in item if k not in known)
        if unknown:
            listed = ", ".join(k[:40] for k in unknown[:5])
            return [], f"message.unknown_field: {listed} (fields: {', '.join(names)})"
    return items, None


def _text(value: Any) -> str | None:
    """A JSON value as the text Table Schema parses (the same checks as a CSV cell)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _table(pending: list[_Pending], names: Sequence[str]) -> tuple[pa.Table, list[int]]:
    columns: dict[str, list[str | None]] = {name: [] for name in names}
    groups: list[int] = []
    for index, item in enumerate(pending):
        for reading in item.readings:
            for name in names:
                columns[name].append(_text(reading.get(name)))
            groups.append(index)
    table = pa.table({name: pa.array(values, type=pa.string()) for name, values in columns.items()})
    return table, groups


def _reason(errors: list[IngestError]) -> str:
    first = errors[0]
    # Row numbers count rows of the whole batch, meaningless to the publisher: the field and the problem remain.
    message = first.message.split(", ", 1)[1] if first.message.startswith("row ") else first.message
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"reading.invalid: {first.code}: {message}{more}"
