"""The gateway application: the federation's front door. Stateless (no database); it holds caches only.

Authentication (Keycloak tokens, federated API keys, bootstrap keys), rate limits, body size limit, CORS for the
console, routing to the registry and to each territory's node (from the registry's directory), the federated
catalogue, and the federated query over NATS. See docs/GATEWAY.md.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from gateway.api import GatewayState, router
from gateway.auth import GatewayAuthenticator, RevocationListener
from gateway.config import GatewaySettings
from gateway.directory import Directory
from gateway.edge import BodySizeLimit, RateLimiter
from kit.auth.assertions import AssertionSigner
from kit.auth.oidc import OidcVerifier
from kit.auth.remote import RegistryKeyVerifier
from kit.grants import GrantCache
from kit.service import ServiceContext, create_service_app
from kit.settings import ServiceSettings

__all__ = ["create_app"]


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the gateway app (settings from the environment by default)."""
    gateway_settings = settings if isinstance(settings, GatewaySettings) else GatewaySettings()
    held: dict[str, Any] = {}

    async def on_startup(ctx: ServiceContext) -> None:
        s = gateway_settings
        registry = httpx.AsyncClient(base_url=s.registry_url.rstrip("/"), timeout=5.0, trust_env=False)
        directory = Directory(registry, ttl=s.directory_cache_seconds)
        oidc = (
            OidcVerifier(s.oidc_issuer, audience=s.oidc_audience, leeway=s.oidc_leeway_seconds)
            if s.oidc_issuer
            else None
        )
        apikeys = (
            RegistryKeyVerifier(s.registry_url, s.registry_key.get_secret_value(), ttl=s.apikey_cache_seconds)
            if s.registry_key is not None
            else None
        )
        grants = GrantCache(ctx.messaging)
        await grants.start()
        listener = RevocationListener(ctx.messaging, apikeys) if apikeys is not None else None
        if listener is not None:
            await listener.start()
        signer = (
            AssertionSigner(s.assertion_signing_key.get_secret_value(), lifetime=s.assertion_lifetime_seconds)
            if s.assertion_signing_key is not None
            else None
        )
        state = GatewayState(
            settings=s,
            authenticator=GatewayAuthenticator(keyring=ctx.keyring, directory=directory, oidc=oidc, apikeys=apikeys),
            directory=directory,
            limiter=RateLimiter(),
            http=httpx.AsyncClient(timeout=s.proxy_timeout_seconds, trust_env=False),
            messaging=ctx.messaging,
            grants=grants,
            signer=signer,
        )
        app.state.gateway = state
        held.update(registry=registry, listener=listener)

    async def on_shutdown(ctx: ServiceContext) -> None:
        state: GatewayState | None = getattr(app.state, "gateway", None)
        if state is None:
            return
        if held["listener"] is not None:
            await held["listener"].stop()
        await state.grants.stop()
        await state.authenticator.close()
        await state.http.aclose()
        await held["registry"].aclose()

    app = create_service_app(
        service="gateway",
        settings=gateway_settings,
        title="Maillage gateway",
        description="Front door of the federation: authentication, rate limits, routing, federated queries.",
        routers=[router],
        with_database=False,
        whoami=False,  # the gateway's own /v1/whoami knows every kind of caller
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=gateway_settings.console_origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "If-Match", "X-Request-Id"],
        expose_headers=["X-Request-Id", "Retry-After", "ETag", "Location"],
        max_age=600,
    )
    app.add_middleware(BodySizeLimit, max_bytes=gateway_settings.max_body_bytes)
    return app
