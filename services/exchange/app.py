"""The exchange service application: the territories' data and the policy-enforced compute-to-data query engine."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import Any

from fastapi import FastAPI
from nats.aio.msg import Msg
from opentelemetry import trace
from pydantic import ValidationError

from contracts import subjects
from contracts.datasets import TableSchema
from contracts.requests import QueryRequestV1, SubjectRequestV1
from exchange.api import negotiate_result, router
from exchange.config import ExchangeSettings
from exchange.consent import ConsentSets
from exchange.query import QueryEngine, render
from exchange.rights import purge_territory, subject_request
from exchange.sandbox import Limits, SandboxPool
from exchange.storage import Storage
from exchange.streaming import StreamingIngestor
from kit.advertisements import advertisements_consumer, published_metadata
from kit.auth import Principal
from kit.auth.remote import RegistryKeyVerifier
from kit.db import Database
from kit.errors import MaillageError, Unauthorized
from kit.grants import GrantCache
from kit.periodic import run_every
from kit.service import ServiceContext, create_service_app
from kit.settings import ServiceSettings
from kit.telemetry import extract_context

__all__ = ["create_app"]

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


def _limits(settings: ExchangeSettings) -> Limits:
    wall = settings.query_timeout_seconds
    return Limits(
        memory_bytes=settings.worker_memory_mb * 1024 * 1024,
        duckdb_memory_limit=settings.duckdb_memory_limit,
        threads=settings.duckdb_threads,
        max_execution_ms=int(wall * 1000 * 0.8),
        wall_clock_s=wall,
        max_result_bytes=settings.max_result_bytes,
    )


async def _nats_caller(ctx: ServiceContext, msg: Msg) -> Principal:
    secret = ((msg.headers or {}).get("Authorization", "")).partition(" ")[2].strip()
    principal = ctx.keyring.authenticate(secret) if secret else None
    if principal is None and secret and ctx.key_verifier is not None:
        principal = await ctx.key_verifier.verify(secret)
    if principal is None:
        raise Unauthorized("unknown, malformed or revoked key", code="auth.invalid_credentials")
    return principal


def _responder(ctx: ServiceContext, engine: QueryEngine, siren: str) -> Callable[[Msg], Awaitable[None]]:
    """The NATS handler of ``exchange.<siren>.query``: the same path as HTTP, answered with status headers."""

    async def handle(msg: Msg) -> None:
        headers = msg.headers or {}
        with tracer.start_as_current_span("exchange.query.nats", context=extract_context(headers)):
            try:
                request = QueryRequestV1.model_validate_json(msg.data)
                principal = await _nats_caller(ctx, msg)
                result = await engine.run(principal, siren, request.sql, request.agreement_id)
                body, media_type = render(result.table, negotiate_result(headers.get("Accept")))
                reply_headers = {
                    "Maillage-Status": "200",
                    "Content-Type": media_type,
                    "Maillage-Suppressed-Groups": "unknown"
                    if result.suppressed_groups is None
                    else str(result.suppressed_groups),
                    "Maillage-Audit-Id": result.audit_id,
                }
            except ValidationError:
                body = json.dumps({"error": "request.invalid", "detail": "the body is not a QueryRequestV1"}).encode()
                reply_headers = {"Maillage-Status": "422", "Content-Type": "application/json"}
            except MaillageError as exc:
                body = json.dumps(exc.body()).encode()
                reply_headers = {"Maillage-Status": str(exc.status_code), "Content-Type": "application/json"}
            except Exception:  # noqa: BLE001 - a responder must always answer
                log.exception("query over NATS failed")
                body = json.dumps({"error": "internal", "detail": "internal error"}).encode()
                reply_headers = {"Maillage-Status": "500", "Content-Type": "application/json"}
            if msg.reply and ctx.messaging.nc is not None:
                await ctx.messaging.nc.publish(msg.reply, body, headers=reply_headers)

    return handle


def _subject_responder(ctx: ServiceContext, storage: Storage, siren: str) -> Callable[[Msg], Awaitable[None]]:
    """The NATS handler of ``exchange.<siren>.subject``: data-subject requests from the consent service."""

    async def handle(msg: Msg) -> None:
        headers = msg.headers or {}
        with tracer.start_as_current_span("exchange.subject_request.nats", context=extract_context(headers)):
            try:
                request = SubjectRequestV1.model_validate_json(msg.data)
                principal = await _nats_caller(ctx, msg)
                assert ctx.database is not None
                answer = await asyncio.to_thread(
                    subject_request, ctx.database, storage, siren, principal, request, ctx.source
                )
                body, status = json.dumps(answer, default=str).encode(), "200"
            except ValidationError:
                body = json.dumps({"error": "request.invalid", "detail": "the body is not a SubjectRequestV1"}).encode()
                status = "422"
            except MaillageError as exc:
                body, status = json.dumps(exc.body()).encode(), str(exc.status_code)
            except Exception:  # noqa: BLE001 - a responder must always answer
                log.exception("data-subject request over NATS failed")
                body, status = json.dumps({"error": "internal", "detail": "internal error"}).encode(), "500"
            if msg.reply and ctx.messaging.nc is not None:
                await ctx.messaging.nc.publish(
                    msg.reply, body, headers={"Maillage-Status": status, "Content-Type": "application/json"}
                )

    return handle


def _purge_all(database: Database, storage: Storage, territories: list[str], source: str) -> None:
    """The scheduled retention purge of every hosted territory (one failing does not stop the others)."""
    for siren in territories:
        try:
            purge_territory(database, storage, siren, source=source)
        except Exception as exc:  # noqa: BLE001 - the next period retries
            log.warning("retention purge of %s failed: %s", siren, exc)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the exchange app (settings from the environment by default)."""
    exchange_settings = settings if isinstance(settings, ExchangeSettings) else ExchangeSettings()
    state: dict[str, Any] = {}

    def schema_of(ctx: ServiceContext) -> Callable[[str, str], TableSchema | None]:
        def lookup(siren: str, slug: str) -> TableSchema | None:
            assert ctx.database is not None
            with ctx.database.session() as session:
                metadata = published_metadata(session, f"{siren}/{slug}")
            return metadata.table_schema if metadata is not None else None

        return lookup

    async def on_startup(ctx: ServiceContext) -> None:
        assert ctx.database is not None
        storage = Storage(
            exchange_settings.data_dir, pseudonym_secret=exchange_settings.pseudonym_secret.get_secret_value()
        )
        await asyncio.to_thread(storage.remove_leftovers)
        sandbox = SandboxPool(
            exchange_settings.sandbox_workers,
            _limits(exchange_settings),
            temp_dir=exchange_settings.data_dir / "sandbox-tmp",
        )
        await sandbox.start()
        grants = GrantCache(ctx.messaging, staleness=timedelta(seconds=exchange_settings.grants_staleness_seconds))
        await grants.start()
        if exchange_settings.registry_url and exchange_settings.registry_key:
            ctx.key_verifier = RegistryKeyVerifier(
                exchange_settings.registry_url, exchange_settings.registry_key.get_secret_value()
            )
        consents = ConsentSets(exchange_settings.data_dir, ctx.database, exchange_settings.territories)
        await asyncio.to_thread(consents.rebuild_all)
        state["consents"] = consents
        engine = QueryEngine(
            database=ctx.database,
            storage=storage,
            sandbox=sandbox,
            grants=grants,
            source=ctx.source,
            max_rows=exchange_settings.max_result_rows,
            consents=consents,
        )
        ingestor: StreamingIngestor | None = None
        if exchange_settings.territories:  # a node without territories has nothing to ingest
            ingestor = StreamingIngestor(
                storage=storage,
                messaging=ctx.messaging,
                schemas=schema_of(ctx),
                territories=exchange_settings.territories,
                durable=f"exchange-{exchange_settings.node_id}-ingest",
            )
            await ingestor.start()
        app.state.storage, app.state.engine = storage, engine
        purge = partial(_purge_all, ctx.database, storage, exchange_settings.territories, ctx.source)
        retention = asyncio.create_task(
            run_every(exchange_settings.retention_interval_seconds, purge, what="retention purge"), name="retention"
        )
        state.update(sandbox=sandbox, grants=grants, ingestor=ingestor, subscriptions=[], retention=retention)

        async def subscribe() -> None:
            for subscription in state["subscriptions"]:
                try:
                    await subscription.unsubscribe()
                except Exception:  # noqa: BLE001
                    pass
            state["subscriptions"] = []
            assert ctx.messaging.nc is not None
            for siren in exchange_settings.territories:
                state["subscriptions"].append(
                    await ctx.messaging.nc.subscribe(
                        subjects.exchange_query(siren), queue=f"exchange-{siren}", cb=_responder(ctx, engine, siren)
                    )
                )
                state["subscriptions"].append(
                    await ctx.messaging.nc.subscribe(
                        subjects.exchange_subject(siren),
                        queue=f"exchange-{siren}",
                        cb=_subject_responder(ctx, storage, siren),
                    )
                )

        if ctx.messaging.connected:
            await subscribe()
        else:
            ctx.messaging.on_ready(subscribe)

    async def on_shutdown(ctx: ServiceContext) -> None:
        if "retention" in state:
            state["retention"].cancel()
        if "grants" in state:
            if state["ingestor"] is not None:
                await state["ingestor"].stop()
            await state["grants"].stop()
            await state["sandbox"].stop()
        if isinstance(ctx.key_verifier, RegistryKeyVerifier):
            await ctx.key_verifier.close()

    app = create_service_app(
        service="exchange",
        settings=exchange_settings,
        title="Maillage exchange",
        description=(
            "The territories' data on this node, validated ingestion (files and streams), open-data downloads, the "
            "policy-enforced compute-to-data query engine in a sandbox, and the hash-chained audit log."
        ),
        routers=[router],
        consumers=lambda ctx: [
            advertisements_consumer(
                database=ctx.database,  # type: ignore[arg-type]
                messaging=ctx.messaging,
                durable=f"exchange-{exchange_settings.node_id}-datasets",
            ),
            state["consents"].consumer(ctx.messaging, durable=f"exchange-{exchange_settings.node_id}-consent"),
        ],
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )
    return app
