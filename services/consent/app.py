"""The consent service application."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from consent import records
from consent.api import router
from consent.config import ConsentSettings
from consent.receipts import ReceiptSigner
from consent.subject_requests import purge_access_files
from kit.db import utcnow
from kit.service import ServiceContext, create_service_app
from kit.settings import ServiceSettings

__all__ = ["create_app", "expire_once"]

log = logging.getLogger(__name__)


def expire_once(ctx: ServiceContext) -> int:
    """Mark expired every consent of a hosted territory whose validity ended; the number expired."""
    assert ctx.database is not None
    secret = ctx.settings.secret_key.get_secret_value()
    signers = {siren: ReceiptSigner.derive(secret, siren) for siren in ctx.settings.territories}
    with ctx.database.unit_of_work() as session:
        return records.expire_due(session, now=utcnow(), signers=signers, source=ctx.source)


async def _expiry_loop(ctx: ServiceContext, interval: float) -> None:
    files = ctx.settings.data_dir / "subject-requests"
    while True:
        try:
            count = await asyncio.to_thread(expire_once, ctx)
            if count:
                log.info("%d consent(s) expired", count)
            removed = await asyncio.to_thread(purge_access_files, files)
            if removed:
                log.info("%d access file(s) older than 30 days deleted", removed)
        except Exception as exc:  # noqa: BLE001 - try again at the next period
            log.warning("consent expiry failed: %s", exc)
        await asyncio.sleep(interval)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the consent app (settings from the environment by default)."""
    consent_settings = settings if isinstance(settings, ConsentSettings) else ConsentSettings()
    tasks: list[asyncio.Task[None]] = []

    async def on_startup(ctx: ServiceContext) -> None:
        tasks.append(
            asyncio.create_task(_expiry_loop(ctx, consent_settings.expiry_interval_seconds), name="consent-expiry")
        )

    async def on_shutdown(ctx: ServiceContext) -> None:
        for task in tasks:
            task.cancel()

    return create_service_app(
        service="consent",
        settings=consent_settings,
        title="Maillage consent",
        description=(
            "Consent records (ISO/IEC TS 27560 as mapped by W3C DPV) of the territories hosted on this node: notices, "
            "decisions, withdrawals and expiry as append-only events, signed receipts, and the consent events the "
            "exchanges apply to consent-based agreements."
        ),
        routers=[router],
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )
