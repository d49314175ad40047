"""Materialise every ACTIVE agreement as a grant in the JetStream KV bucket ``grants``; delete it otherwise.

Fast path: right after a transition commits, the agreement's key is put or deleted. Safety net: the whole bucket is
reconciled with the database at start, after every reconnection to NATS, and every ``interval`` seconds, then the
heartbeat is rewritten; so a lost update costs at most one period, and exchanges can tell a live registry.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from nats.js.errors import KeyNotFoundError, NoKeysError
from sqlmodel import col, select

from contracts.grants import GRANTS_BUCKET, HEARTBEAT_KEY, Grant, Heartbeat
from kit.db import Database
from kit.messaging import Messaging
from registry.agreements import Agreement, AgreementState, terms_of

__all__ = ["GrantMaterializer", "grant_of"]

log = logging.getLogger(__name__)


def grant_of(agreement: Agreement, terms_json: dict[str, object]) -> Grant:
    """The grant of an ACTIVE agreement (deterministic: the same agreement version gives the same bytes)."""
    assert agreement.activated_at is not None
    return Grant.model_validate(
        {
            "agreement_id": agreement.id,
            "agreement_version": agreement.version,
            "provider": agreement.provider,
            "dataset": agreement.dataset,
            "consumer": agreement.consumer,
            "terms_version": agreement.terms_version,
            "terms_hash": agreement.terms_hash,
            "terms": terms_json,
            "activated_at": agreement.activated_at,
            "issued_at": agreement.updated_at,
        }
    )


class GrantMaterializer:
    """Keeps the ``grants`` bucket equal to the set of ACTIVE agreements."""

    def __init__(self, database: Database, messaging: Messaging, *, interval: float = 30.0) -> None:
        self.database = database
        self.messaging = messaging
        self.interval = interval
        self.reconciliations = 0
        self.last_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.messaging.on_ready(self._on_ready)
        self._task = asyncio.create_task(self._run(), name="grants-reconcile")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    async def _on_ready(self) -> None:
        self._wake.set()

    def notify(self, agreement_id: str) -> None:
        """Put or delete one agreement's grant now (callable from any thread, e.g. after a commit)."""
        if self._loop is None or self._loop.is_closed():
            return

        def schedule() -> None:
            task = asyncio.ensure_future(self._apply(agreement_id))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        self._loop.call_soon_threadsafe(schedule)

    def _desired_one(self, agreement_id: str) -> Grant | None:
        with self.database.session() as session:
            agreement = session.get(Agreement, agreement_id)
            if agreement is None or agreement.state is not AgreementState.ACTIVE:
                return None
            terms = terms_of(db_session=session, agreement=agreement)
            return grant_of(agreement, terms.model_dump(mode="json"))

    def _desired_all(self) -> dict[str, Grant]:
        with self.database.session() as session:
            rows = session.exec(select(Agreement).where(col(Agreement.state) == AgreementState.ACTIVE)).all()
            return {
                row.id: grant_of(row, terms_of(db_session=session, agreement=row).model_dump(mode="json"))
                for row in rows
            }

    async def _apply(self, agreement_id: str) -> None:
        try:
            grant = await asyncio.to_thread(self._desired_one, agreement_id)
            kv = await self.messaging.js.key_value(GRANTS_BUCKET)
            if grant is None:
                await kv.delete(agreement_id)
            else:
                await kv.put(agreement_id, grant.model_dump_json().encode())
        except Exception as exc:  # noqa: BLE001 - the reconciliation repairs whatever this missed
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("grant %s not materialised now (%s); the next reconciliation will", agreement_id, exc)

    async def reconcile(self) -> tuple[int, int]:
        """Make the bucket equal to the database; returns (keys written, keys deleted)."""
        desired = await asyncio.to_thread(self._desired_all)
        kv = await self.messaging.js.key_value(GRANTS_BUCKET)
        try:
            present = set(await kv.keys())
        except NoKeysError:
            present = set()
        present.discard(HEARTBEAT_KEY)
        deleted = 0
        for key in sorted(present - set(desired)):
            await kv.delete(key)
            deleted += 1
        written = 0
        for key, grant in desired.items():
            value = grant.model_dump_json().encode()
            try:
                current = await kv.get(key)
                unchanged = current.value == value
            except KeyNotFoundError:
                unchanged = False
            if not unchanged:
                await kv.put(key, value)
                written += 1
        heartbeat = Heartbeat(confirmed_at=datetime.now(UTC), active_grants=len(desired))
        await kv.put(HEARTBEAT_KEY, heartbeat.model_dump_json().encode())
        self.reconciliations += 1
        if written or deleted:
            log.info("grants reconciled: %d written, %d deleted", written, deleted)
        return written, deleted

    async def _run(self) -> None:
        while True:
            if self.messaging.connected:
                try:
                    await self.reconcile()
                    self.last_error = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - try again at the next period
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("grants reconciliation failed: %s", self.last_error)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
