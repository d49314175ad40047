"""The exchange side of grants: a live copy of the ``grants`` KV bucket, failing closed when it goes stale.

:class:`GrantCache` loads the bucket whole, then applies every put and delete as the watch delivers them. After a
reconnection (nats-server restarted, network cut) it watches again from scratch, so what was deleted meanwhile is
gone. A grant is served only while the registry's heartbeat is younger than the staleness bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from nats.js.errors import BucketNotFoundError
from pydantic import ValidationError

from contracts.grants import GRANTS_BUCKET, HEARTBEAT_KEY, Grant, Heartbeat
from kit.messaging import Messaging

__all__ = ["GrantCache"]

log = logging.getLogger(__name__)

_DELETES = ("DEL", "PURGE")


class GrantCache:
    """Grants by agreement id, kept in step with the KV bucket."""

    def __init__(self, messaging: Messaging, *, staleness: timedelta = timedelta(seconds=90)) -> None:
        self.messaging = messaging
        self.staleness = staleness
        self._grants: dict[str, Grant] = {}
        self._heartbeat: Heartbeat | None = None
        self._loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.on_change: list[Callable[[str, Grant | None], None]] = []
        self.last_error: str | None = None

    async def start(self) -> None:
        self.messaging.on_ready(self._rewatch)
        if self.messaging.connected:
            await self._rewatch()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    async def wait_loaded(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._loaded.wait(), timeout)

    async def _rewatch(self) -> None:
        await self.stop()
        self._task = asyncio.create_task(self._watch(), name="grants-watch")

    async def _watch(self) -> None:
        while True:
            try:
                kv = await self.messaging.js.key_value(GRANTS_BUCKET)
                watcher = await kv.watchall()
                snapshot: dict[str, Grant] = {}
                loading = True
                async for entry in watcher:
                    if entry is None:  # end of the initial values
                        self._replace(snapshot)
                        loading = False
                        continue
                    target = snapshot if loading else None
                    self._apply(entry.key, entry.value, entry.operation, target)
            except asyncio.CancelledError:
                raise
            except BucketNotFoundError:
                self.last_error = "the grants bucket does not exist yet"
            except Exception as exc:  # noqa: BLE001 - watch again after any failure
                error = f"{type(exc).__name__}: {exc}"
                if error != self.last_error:  # once per distinct failure, not twice a second during an outage
                    log.warning("grants watch: %s", error)
                self.last_error = error
            await asyncio.sleep(0.5)

    def _replace(self, snapshot: dict[str, Grant]) -> None:
        removed = set(self._grants) - set(snapshot)
        self._grants = snapshot
        self._loaded.set()
        for agreement_id in removed:
            self._notify(agreement_id, None)
        for agreement_id, grant in snapshot.items():
            self._notify(agreement_id, grant)

    def _apply(self, key: str, value: bytes | None, operation: str | None, target: dict[str, Grant] | None) -> None:
        if key == HEARTBEAT_KEY:
            if operation not in _DELETES and value:
                try:
                    self._heartbeat = Heartbeat.model_validate_json(value)
                except ValidationError:
                    log.warning("grants: malformed heartbeat ignored")
            return
        grants = target if target is not None else self._grants
        if operation in _DELETES or not value:
            grants.pop(key, None)
            if target is None:
                self._notify(key, None)
            return
        try:
            grant = Grant.model_validate_json(value)
        except ValidationError:
            # An unreadable grant grants nothing (fail closed).
            log.warning("grants: malformed grant %s ignored", key)
            grants.pop(key, None)
            return
        grants[key] = grant
        if target is None:
            self._notify(key, grant)

    def _notify(self, agreement_id: str, grant: Grant | None) -> None:
        for callback in self.on_change:
            callback(agreement_id, grant)

    @property
    def heartbeat(self) -> Heartbeat | None:
        return self._heartbeat

    def fresh(self, now: datetime | None = None) -> bool:
        """True while the registry confirmed the bucket within the staleness bound."""
        if self._heartbeat is None:
            return False
        return (now or datetime.now(UTC)) - self._heartbeat.confirmed_at <= self.staleness

    def get(self, agreement_id: str, now: datetime | None = None) -> Grant | None:
        """The grant of an agreement, or None when absent, not yet valid, expired, or when the cache is stale."""
        moment = now or datetime.now(UTC)
        if not self.fresh(moment):
            return None
        grant = self._grants.get(agreement_id)
        if grant is None or not (grant.terms.valid_from <= moment < grant.terms.valid_until):
            return None
        return grant

    def grants(self) -> list[Grant]:
        """Every grant held (freshness not checked: for inspection)."""
        return list(self._grants.values())
