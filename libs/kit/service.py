"""The skeleton every service shares: lifespan (database, NATS, outbox relay, consumers, telemetry), health
endpoints, request ids, the error model and authentication of callers.

A service builds its app with :func:`create_service_app` and runs it with :func:`serve`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Protocol

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlmodel import Session

from contracts.identifiers import SubjectTokenError, validate_siren, validate_slug
from kit.auth import AuthMethod, Keyring, Principal
from kit.auth.assertions import AssertionVerifier
from kit.auth.bearer import BearerVerifier
from kit.auth.oidc import OidcVerifier, looks_like_jwt
from kit.consumer import DurableConsumer
from kit.db import Database
from kit.errors import NotFound, Unauthorized, Unprocessable, install_error_handlers
from kit.logs import configure_logging
from kit.messaging import Messaging
from kit.outbox import OutboxRelay, pending_count
from kit.settings import ServiceSettings
from kit.telemetry import instrument_app, setup_telemetry

__all__ = [
    "CallerPrincipal",
    "ContextDep",
    "KeyVerifier",
    "TerritoryPath",
    "SlugPath",
    "CurrentPrincipal",
    "OptionalPrincipal",
    "ServiceContext",
    "SessionDep",
    "create_service_app",
    "get_context",
    "serve",
]

log = logging.getLogger(__name__)

ConsumerFactory = Callable[["ServiceContext"], list[DurableConsumer]]


class KeyVerifier(Protocol):
    """Who a federated API key belongs to: None when refused (or raise Unauthorized with a precise reason)."""

    async def verify(self, secret: str) -> Principal | None: ...


@dataclass
class ServiceContext:
    """Everything a running service holds: settings, database, NATS, relay, consumers, keyring."""

    service: str
    settings: ServiceSettings
    database: Database | None
    messaging: Messaging
    relay: OutboxRelay | None
    keyring: Keyring
    consumers: list[DurableConsumer] = field(default_factory=list)
    key_verifier: KeyVerifier | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def source(self) -> str:
        """CloudEvents ``source`` of events emitted here."""
        return f"urn:maillage:{self.settings.node_id}:{self.service}"


def get_context(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[ServiceContext, Depends(get_context)]


def get_session(ctx: ContextDep) -> Iterator[Session]:
    """A unit of work per request: committed when the route returns normally, rolled back otherwise."""
    if ctx.database is None:
        raise RuntimeError(f"{ctx.service} has no database")
    with ctx.database.unit_of_work() as session:
        yield session


# scope="function": the commit happens before the response is sent, so a client that got 201 reads its write.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized(
            "send Authorization: Bearer <key>", code="auth.missing_credentials", headers={"WWW-Authenticate": "Bearer"}
        )
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthorized(
            "the Authorization header must be 'Bearer <key>'",
            code="auth.malformed_credentials",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return credentials.strip()


def _invalid_credentials() -> Unauthorized:
    return Unauthorized(
        "unknown, malformed or revoked key",
        code="auth.invalid_credentials",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


async def get_principal(request: Request, ctx: ContextDep) -> Principal:
    """The authenticated caller by a bootstrap key, a gateway assertion or a Keycloak token (not a federated key);
    401 with a reason otherwise."""
    secret = _bearer(request)
    principal = ctx.keyring.authenticate(secret)
    if principal is not None:
        return principal
    if looks_like_jwt(secret) and isinstance(ctx.key_verifier, BearerVerifier):
        principal = await ctx.key_verifier.verify_token(secret)
        if principal.auth_method is not AuthMethod.API_KEY:  # federated keys only where CallerPrincipal is used
            return principal
    raise _invalid_credentials()


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def get_caller(request: Request, ctx: ContextDep) -> Principal:
    """The caller, by a bootstrap key, a gateway assertion, a Keycloak token or (where the service has a registry
    verifier) a federated API key."""
    secret = _bearer(request)
    principal = ctx.keyring.authenticate(secret)
    if principal is None and ctx.key_verifier is not None:
        principal = await ctx.key_verifier.verify(secret)
    if principal is None:
        raise _invalid_credentials()
    return principal


CallerPrincipal = Annotated[Principal, Depends(get_caller)]


async def get_optional_principal(request: Request, ctx: ContextDep) -> Principal | None:
    """The caller when credentials are sent (401 if they are wrong), None for anonymous requests."""
    if not request.headers.get("authorization"):
        return None
    return await get_principal(request, ctx)


OptionalPrincipal = Annotated[Principal | None, Depends(get_optional_principal)]


def hosted_territory(ctx: ContextDep, siren: Annotated[str, Path(description="SIREN of a territory")]) -> str:
    """The SIREN of the path: validated (422 ``territory.invalid``) and hosted here (404 ``territory.not_hosted``)."""
    try:
        validate_siren(siren)
    except SubjectTokenError as exc:
        raise Unprocessable(str(exc), code="territory.invalid") from exc
    if siren not in ctx.settings.territories:
        raise NotFound(f"territory {siren} is not hosted on this node", code="territory.not_hosted")
    return siren


def valid_slug(slug: Annotated[str, Path(description="slug of a dataset, [a-z0-9-]")]) -> str:
    """The dataset slug of the path, validated (422 ``dataset.invalid_slug``)."""
    try:
        return validate_slug(slug)
    except SubjectTokenError as exc:
        raise Unprocessable(str(exc), code="dataset.invalid_slug") from exc


TerritoryPath = Annotated[str, Depends(hosted_territory)]
SlugPath = Annotated[str, Depends(valid_slug)]


class HealthStatus(BaseModel):
    status: str
    service: str
    node: str


class ReadinessStatus(BaseModel):
    status: str
    service: str
    node: str
    checks: dict[str, str]
    outbox_pending: int | None = None


def _health_router(service: str, *, with_whoami: bool = True) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=HealthStatus)
    async def healthz(ctx: ContextDep) -> HealthStatus:
        """The process is alive."""
        return HealthStatus(status="ok", service=service, node=ctx.settings.node_id)

    @router.get("/readyz", response_model=ReadinessStatus, responses={503: {"model": ReadinessStatus}})
    async def readyz(ctx: ContextDep) -> Response:
        """Ready when the database and NATS answer; 503 "degraded" with the reason otherwise."""
        checks: dict[str, str] = {}
        pending: int | None = None
        if ctx.database is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(ctx.database.ping), 2)
                pending = await asyncio.to_thread(pending_count, ctx.database)
                checks["database"] = "ok"
            except Exception as exc:  # noqa: BLE001
                checks["database"] = f"unavailable: {type(exc).__name__}"
        problem = await ctx.messaging.check()
        checks["nats"] = "ok" if problem is None else problem
        for consumer in ctx.consumers:
            if consumer.last_error and not ctx.messaging.connected:
                checks[f"consumer:{consumer.durable}"] = consumer.last_error
        ok = all(value == "ok" for key, value in checks.items() if not key.startswith("consumer:"))
        body = ReadinessStatus(
            status="ready" if ok else "degraded",
            service=service,
            node=ctx.settings.node_id,
            checks=checks,
            outbox_pending=pending,
        )
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    if with_whoami:

        @router.get("/v1/whoami", response_model=Principal, tags=["auth"])
        async def whoami(principal: CurrentPrincipal) -> Principal:
            """The principal the presented credentials resolve to."""
            return principal

    return router


def _bearer_verifier(settings: ServiceSettings, federated: KeyVerifier | None) -> BearerVerifier:
    oidc = (
        OidcVerifier(settings.oidc_issuer, audience=settings.oidc_audience, leeway=settings.oidc_leeway_seconds)
        if settings.oidc_issuer
        else None
    )
    return BearerVerifier(
        assertions=AssertionVerifier(settings.assertion_public_keys) if settings.assertion_public_keys else None,
        oidc=oidc,
        federated=federated,
        gateway_required=settings.gateway_required,
    )


def create_service_app(
    *,
    service: str,
    settings: ServiceSettings,
    title: str,
    description: str,
    version: str = "0.1.0",
    routers: list[APIRouter] | None = None,
    consumers: ConsumerFactory | None = None,
    with_database: bool = True,
    migrate: Callable[[Database], None] | None = None,
    on_startup: Callable[[ServiceContext], Awaitable[None]] | None = None,
    on_shutdown: Callable[[ServiceContext], Awaitable[None]] | None = None,
    whoami: bool = True,
) -> FastAPI:
    """A FastAPI app with the kit's lifespan, error model, health endpoints, request ids and telemetry."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        setup_telemetry(service, node_id=settings.node_id)
        database: Database | None = None
        relay: OutboxRelay | None = None
        messaging = Messaging(
            settings.nats_url,
            name=f"{settings.node_id}-{service}",
            credentials_file=str(settings.nats_credentials_file) if settings.nats_credentials_file else None,
            stream_replicas=settings.nats_stream_replicas,
        )
        if with_database:
            database = Database(settings.resolved_database_url(service))
            # Services with migrations (the registry) bring their schema up to date; the others create what is missing.
            await asyncio.to_thread(migrate or Database.create_all, database)
            relay = OutboxRelay(
                database,
                messaging,
                poll_interval=settings.outbox_poll_interval,
                batch_size=settings.outbox_batch_size,
                retention=timedelta(hours=settings.outbox_retention_hours),
            )
        keyring = Keyring.load(settings.keyring_file) if settings.keyring_file else Keyring()
        ctx = ServiceContext(
            service=service, settings=settings, database=database, messaging=messaging, relay=relay, keyring=keyring
        )
        app.state.ctx = ctx
        await messaging.start()
        if relay is not None:
            await relay.start()
        if on_startup is not None:
            await on_startup(ctx)  # before the consumers, so they apply events on prepared state
        # Beyond the keyring: gateway assertions, Keycloak tokens, then the service's federated key verifier (set by
        # on_startup), under one KeyVerifier so that HTTP routes and NATS responders accept the same credentials.
        federated = ctx.key_verifier
        bearer = _bearer_verifier(settings, federated)
        ctx.key_verifier = bearer
        if consumers is not None:
            ctx.consumers = consumers(ctx)
            for consumer in ctx.consumers:
                await consumer.start()
        log.info("%s serving on %s", service, settings.base_url())
        try:
            yield {}
        finally:
            ctx.key_verifier = federated  # the service closes what it made
            await bearer.close()
            if on_shutdown is not None:
                await on_shutdown(ctx)
            for consumer in ctx.consumers:
                await consumer.stop()
            if relay is not None:
                await relay.stop()
            await messaging.close()
            if database is not None:
                database.dispose()

    app = FastAPI(title=title, description=description, version=version, lifespan=lifespan)
    install_error_handlers(app)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        incoming = request.headers.get("x-request-id", "")
        rid = incoming if 8 <= len(incoming) <= 64 and incoming.replace("-", "").isalnum() else uuid.uuid4().hex
        request.state.request_id = rid
        response = await call_next(request)
        response.headers["X-Request-Id"] = rid
        return response

    app.include_router(_health_router(service, with_whoami=whoami))
    for router in routers or []:
        app.include_router(router)
    instrument_app(app)
    return app


def serve(app_factory: Callable[[ServiceSettings], FastAPI], settings: ServiceSettings, service: str) -> None:
    """Run a service with uvicorn (the body of ``python -m <service>``)."""
    configure_logging(settings.log_level, service=service, node=settings.node_id)
    app = app_factory(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=10,
    )
