"""The gateway's HTTP routes: the federated query, routing to the registry and to each territory's node, the
federated catalogue, and ``whoami``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field

from contracts.identifiers import SubjectTokenError, validate_siren
from contracts.requests import QueryRequestV1
from gateway.auth import Caller, GatewayAuthenticator
from gateway.config import GatewaySettings
from gateway.directory import Directory
from gateway.edge import RateLimiter
from gateway.federated import TerritoryAnswer, fan_out, merge, plan_query
from kit.auth import AuthMethod, Principal
from kit.auth.assertions import AssertionSigner
from kit.errors import Forbidden, MaillageError, ServiceUnavailable, Unauthorized, Unprocessable
from kit.grants import GrantCache
from kit.messaging import Messaging

__all__ = ["GatewayState", "router"]

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

QUERY_SCOPE = "query"
# Request headers a service may need; everything else (cookies, the caller's credentials...) stays at the edge.
FORWARDED_REQUEST_HEADERS = ("accept", "content-type", "if-match", "if-none-match", "idempotency-key", "x-request-id")
DROPPED_RESPONSE_HEADERS = {"content-length", "transfer-encoding", "connection", "server", "date", "content-encoding"}


@dataclass
class GatewayState:
    """What the gateway holds while it runs."""

    settings: GatewaySettings
    authenticator: GatewayAuthenticator
    directory: Directory
    limiter: RateLimiter
    http: httpx.AsyncClient
    messaging: Messaging
    grants: GrantCache
    signer: AssertionSigner | None

    def authorization_for(self, caller: Caller, request_id: str | None) -> str:
        """What the gateway sends downstream: its signed assertion, or the caller's own credential."""
        if self.signer is not None:
            return f"Bearer {self.signer.sign(caller.principal, request_id=request_id)}"
        return f"Bearer {caller.credential}"


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def get_optional_caller(request: Request, state: StateDep) -> Caller | None:
    """The caller (or None, anonymous), after the rate limits of its key, its organisation or its address."""
    caller = await state.authenticator.authenticate(request)
    s = state.settings
    if caller is None:
        state.limiter.enforce(
            [(f"ip:{_client_address(request)}", s.rate_limit_anonymous, s.rate_limit_anonymous_burst)],
            what="client address",
        )
        return None
    principal = caller.principal
    limits = [(f"sub:{principal.auth_method}:{principal.subject}", s.rate_limit_per_key, s.rate_limit_per_key_burst)]
    if principal.organisation:
        limits.append(
            (f"org:{principal.organisation}", s.rate_limit_per_organisation, s.rate_limit_per_organisation_burst)
        )
    state.limiter.enforce(limits, what="key or organisation")
    return caller


async def get_caller(caller: Annotated[Caller | None, Depends(get_optional_caller)]) -> Caller:
    if caller is None:
        raise Unauthorized(
            "send Authorization: Bearer <token or key>",
            code="auth.missing_credentials",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller


OptionalCallerDep = Annotated[Caller | None, Depends(get_optional_caller)]
CallerDep = Annotated[Caller, Depends(get_caller)]

router = APIRouter()


@router.get("/v1/whoami", response_model=Principal, tags=["auth"])
async def whoami(caller: CallerDep) -> Principal:
    """The principal the presented token or key resolves to at the gateway."""
    return caller.principal


class FederatedQuery(BaseModel):
    """A query over several territories."""

    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1, max_length=100_000)
    territories: list[str] | None = Field(
        default=None, max_length=200, description="SIRENs; default: every territory that granted the caller"
    )
    agreements: dict[str, str] = Field(
        default_factory=dict, description="agreement id per SIREN, where the caller holds several grants"
    )


def _require_scope(principal: Principal, scope: str) -> None:
    if principal.auth_method is AuthMethod.API_KEY and scope not in principal.scopes:
        raise Forbidden(f"this API key lacks the scope {scope}", code="auth.scope_missing")


async def _targets(body: FederatedQuery, principal: Principal, state: StateDep) -> list[str]:
    hosted = set(await state.directory.territories())
    if body.territories is not None:
        targets = []
        for siren in dict.fromkeys(body.territories):
            try:
                validate_siren(siren)
            except SubjectTokenError as exc:
                raise Unprocessable(str(exc), code="territory.invalid") from exc
            targets.append(siren)
        if not targets:
            raise Unprocessable("name at least one territory", code="query.no_territory")
        return targets
    granted = {g.provider for g in state.grants.grants() if principal.acts_for(g.consumer)}
    targets = sorted(granted & hosted)
    if not targets:
        raise Unprocessable(
            "no territory has granted you access; name the territories to query (open data)",
            code="query.no_territory",
        )
    return targets


@router.post("/v1/query", tags=["query"])
async def federated_query(body: FederatedQuery, request: Request, caller: CallerDep, state: StateDep) -> Response:
    """Run one SQL query on several territories at once; merged answer with each territory's status."""
    _require_scope(caller.principal, QUERY_SCOPE)
    targets = await _targets(body, caller.principal, state)
    plan = plan_query(body.sql, territories=len(targets))
    nc = state.messaging.nc
    if nc is None or not state.messaging.connected:
        raise ServiceUnavailable("the gateway is not connected to NATS", code="gateway.nats_unavailable")
    with tracer.start_as_current_span("gateway.federated_query") as span:
        span.set_attribute("maillage.territories", len(targets))
        span.set_attribute("maillage.plan", plan.kind)
        hosted = set(await state.directory.territories())
        requests = {
            siren: QueryRequestV1(sql=plan.node_sql, agreement_id=body.agreements.get(siren))
            for siren in targets
            if siren in hosted
        }
        answers: dict[str, TerritoryAnswer] = {
            siren: TerritoryAnswer(status="unavailable", detail="no node of the federation hosts this territory")
            for siren in targets
            if siren not in hosted
        }
        rid = getattr(request.state, "request_id", None)
        answers.update(
            await fan_out(
                nc,
                requests,
                authorization=state.authorization_for(caller, rid),
                timeout=state.settings.query_node_timeout_seconds,
            )
        )
        ok = sum(1 for a in answers.values() if a.status == "ok")
        span.set_attribute("maillage.territories_ok", ok)
    statuses = {siren: answers[siren].summary() for siren in targets}
    if ok == 0:
        refused = any(a.status == "refused" for a in answers.values())
        raise MaillageError(
            "no territory answered the query" if not refused else "every territory refused the query",
            code="query.refused" if refused else "query.unavailable",
            status_code=403 if refused else 504,
            extra={"territories": statuses},
        )
    table = merge(plan, answers)
    content: dict[str, Any] = {
        "columns": table.column_names,
        "rows": table.to_pylist(),
        "territories": statuses,
        "partial": ok < len(targets),
    }
    return JSONResponse(jsonable_encoder(content))


def _forward_headers(request: Request, caller: Caller | None, state: GatewayState) -> dict[str, str]:
    headers = {name: value for name, value in request.headers.items() if name.lower() in FORWARDED_REQUEST_HEADERS}
    rid = getattr(request.state, "request_id", None)
    if rid:
        headers["X-Request-Id"] = rid
    if caller is not None:
        headers["Authorization"] = state.authorization_for(caller, rid)
    return headers


async def _proxy(base: str, path: str, request: Request, caller: Caller | None, state: GatewayState) -> Response:
    url = f"{base}/{path.lstrip('/')}"
    body = await request.body()  # bounded by the body size limit
    try:
        upstream = await state.http.request(
            request.method,
            url,
            params=str(request.query_params),
            content=body or None,
            headers=_forward_headers(request, caller, state),
        )
    except httpx.TimeoutException as exc:
        raise MaillageError(
            "the service did not answer in time", code="gateway.upstream_timeout", status_code=504
        ) from exc
    except httpx.HTTPError as exc:
        raise MaillageError("the service is unreachable", code="gateway.upstream_unavailable", status_code=502) from exc
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in DROPPED_RESPONSE_HEADERS}
    headers.pop("x-request-id", None)  # the gateway's own request id is set by its middleware
    return Response(content=upstream.content, status_code=upstream.status_code, headers=headers)


def _path_siren(siren: str) -> str:
    try:
        return validate_siren(siren)
    except SubjectTokenError as exc:
        raise Unprocessable(str(exc), code="territory.invalid") from exc


METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


async def to_registry(path: str, request: Request, caller: OptionalCallerDep, state: StateDep) -> Response:
    """The federation registry (agreements, keys, directory, register), through the gateway."""
    return await _proxy(state.settings.registry_url.rstrip("/"), path, request, caller, state)


async def to_node(
    siren: str, service: str, path: str, request: Request, caller: OptionalCallerDep, state: StateDep
) -> Response:
    """The catalog, exchange or consent service of the node hosting a territory."""
    siren = _path_siren(siren)
    if service not in ("catalog", "exchange", "consent"):
        raise MaillageError(f"no service {service!r} on nodes", code="http.not_found", status_code=404)
    if service == "exchange" and path.rstrip("/").endswith("/query") and caller is not None:
        _require_scope(caller.principal, QUERY_SCOPE)
    return await _proxy(await state.directory.url(siren, service), path, request, caller, state)


for _method in METHODS:
    # One route per method, so that each has its own OpenAPI operation id.
    router.add_api_route(
        "/registry/{path:path}",
        to_registry,
        methods=[_method],
        tags=["routing"],
        operation_id=f"registry_{_method.lower()}",
    )
    router.add_api_route(
        "/t/{siren}/{service}/{path:path}",
        to_node,
        methods=[_method],
        tags=["routing"],
        operation_id=f"node_{_method.lower()}",
    )


@router.get("/v1/search", tags=["catalogue"])
async def federated_search(request: Request, caller: OptionalCallerDep, state: StateDep) -> Response:
    """Search the federated catalogue (every node indexes every territory's datasets)."""
    return await _proxy(await state.directory.any_url("catalog"), "v1/search", request, caller, state)


@router.get("/federation/{document}", tags=["catalogue"])
async def federated_dcat(document: str, request: Request, caller: OptionalCallerDep, state: StateDep) -> Response:
    """The federation-wide DCAT-AP catalogue (``catalog.ttl``, ``catalog.jsonld``, ``catalog.rdf``)."""
    if not document.startswith("catalog"):
        raise MaillageError("unknown federation document", code="http.not_found", status_code=404)
    return await _proxy(await state.directory.any_url("catalog"), f"federation/{document}", request, caller, state)
