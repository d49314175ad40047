"""The consent service application."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from fastapi import FastAPI

from consent import records
from consent.api import router
from consent.config import ConsentSettings
from consent.receipts import ReceiptSigner
from consent.subject_requests import purge_access_files
from kit.db import utcnow
from kit.periodic import run_every
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


def _housekeeping(ctx: ServiceContext) -> None:
    """Expire consents whose validity ended; delete access files older than 30 days (they hold personal data)."""
    count = expire_once(ctx)
    if count:
        log.info("%d consent(s) expired", count)
    removed = purge_access_files(ctx.settings.data_dir / "subject-requests")
    if removed:
        log.info("%d access file(s) older than 30 days deleted", removed)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the consent app (settings from the environment by default)."""
    consent_settings = settings if isinstance(settings, ConsentSettings) else ConsentSettings()
    tasks: list[asyncio.Task[None]] = []

    async def on_startup(ctx: ServiceContext) -> None:
        job = partial(_housekeeping, ctx)
        tasks.append(
            asyncio.create_task(
                run_every(consent_settings.expiry_interval_seconds, job, what="consent expiry"), name="consent-expiry"
            )
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
