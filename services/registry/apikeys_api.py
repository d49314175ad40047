"""HTTP API of federated API keys: issue, list, rotate, revoke, and verification for gateways.

Keys belong to an owner: the SIRET of an admitted organisation or the SIREN of a territory, both under
``/v1/organisations/{owner}/apikeys``. Operators, a territory's admins and stewards, and the owner's own keys with
scope ``apikeys:manage`` manage them; a key never grants a scope it does not hold. The secret appears once, in the
201 answer of a creation or rotation (``Cache-Control: no-store``).

``POST /v1/apikeys/verify`` is for gateways: the caller must be an operator or hold scope ``apikeys:verify``
(never issuable on a federated key, so keys cannot be probed with keys). It answers the key's principal, or 401 with
``apikey.malformed`` (decided without touching the database), ``apikey.unknown``, ``apikey.revoked``,
``apikey.expired`` or ``apikey.rotated``.

Routes here accept federated keys as credentials too (:data:`CallerDep`), so a partner manages its keys with its keys.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Path, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from kit.auth import Principal
from kit.errors import Forbidden
from kit.service import CallerPrincipal, ContextDep, SessionDep
from registry import apikeys
from registry.apikeys import ApiKey, ApiKeyScope, ApiKeyState

__all__ = ["CallerDep", "router"]

router = APIRouter(prefix="/v1", tags=["apikeys"])

OwnerPath = Annotated[
    str,
    Path(
        pattern=r"^[0-9]{9}(?:[0-9]{5})?$",
        description="SIRET of an admitted organisation, or SIREN of a territory of the federation",
    ),
]
KeyIdPath = Annotated[str, Path(max_length=36, description="id of the API key (UUID)")]
_NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # a label shown in consoles and logs: no control characters


CallerDep = CallerPrincipal  # bootstrap keys, or this registry's federated keys (LocalKeyVerifier)


class ApiKeyCreate(BaseModel):
    """A key to issue."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=_NAME_PATTERN, description="a label, e.g. 'ETL prod'")
    scopes: list[ApiKeyScope] = Field(min_length=1, max_length=len(ApiKeyScope))
    expires_at: AwareDatetime | None = Field(
        default=None,
        description=f"default now + {apikeys.DEFAULT_LIFETIME.days} days, at most {apikeys.MAX_LIFETIME.days} days",
    )


class ApiKeyRotate(BaseModel):
    """How to rotate a key."""

    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int = Field(
        default=int(apikeys.DEFAULT_OVERLAP.total_seconds()),
        ge=0,
        le=int(apikeys.MAX_OVERLAP.total_seconds()),
        description="how long the old key stays valid (default 24 h, at most 7 days)",
    )
    expires_at: AwareDatetime | None = Field(
        default=None, description="expiry of the new key; default: the old key's lifetime, from now"
    )


class ApiKeyRevoke(BaseModel):
    """Why a key is revoked."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500, pattern=_NAME_PATTERN)


class ApiKeyVerify(BaseModel):
    """A key presented to a gateway."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(max_length=200)


class ApiKeyOut(BaseModel):
    """A key as its managers see it: never its secret nor its hash."""

    id: str
    owner: str
    name: str
    lookup_prefix: str
    hint: str = Field(description="how the key starts, to recognise it")
    scopes: list[str]
    state: ApiKeyState
    created_at: datetime
    created_by: str
    expires_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None
    rotated_from: str | None
    replaced_by: str | None
    overlap_until: datetime | None


class IssuedApiKey(ApiKeyOut):
    """A key just issued, with its secret: shown once, never again."""

    secret: str


class VerifiedApiKey(BaseModel):
    """The principal a valid key stands for, and until when a gateway may trust it."""

    principal: Principal
    key_id: str
    expires_at: datetime
    overlap_until: datetime | None


def _out(key: ApiKey) -> ApiKeyOut:
    now = apikeys.utcnow()
    return ApiKeyOut(
        id=key.id,
        owner=key.owner,
        name=key.name,
        lookup_prefix=key.lookup_prefix,
        hint=f"mlg_{apikeys.KEY_KIND}_{key.lookup_prefix}…",
        scopes=list(key.scopes),
        state=key.state(now),
        created_at=apikeys.as_utc(key.created_at),
        created_by=key.created_by,
        expires_at=apikeys.as_utc(key.expires_at),
        last_used_at=apikeys.as_utc_or_none(key.last_used_at),
        revoked_at=apikeys.as_utc_or_none(key.revoked_at),
        revoked_by=key.revoked_by,
        revoke_reason=key.revoke_reason,
        rotated_from=key.rotated_from,
        replaced_by=key.replaced_by,
        overlap_until=apikeys.as_utc_or_none(key.overlap_until),
    )


def _issued(key: ApiKey, secret: str, response: Response) -> IssuedApiKey:
    response.headers["Location"] = f"/v1/organisations/{key.owner}/apikeys/{key.id}"
    response.headers["Cache-Control"] = "no-store"
    return IssuedApiKey(**_out(key).model_dump(), secret=secret)


def _managed_owner(session: SessionDep, owner: str, principal: Principal) -> str:
    apikeys.resolve_owner(db_session=session, owner=owner)  # 404 first: the directory is public anyway
    apikeys.require_manager(principal, owner)
    return owner


@router.post("/organisations/{owner}/apikeys", response_model=IssuedApiKey, status_code=status.HTTP_201_CREATED)
def create_apikey(
    body: ApiKeyCreate, owner: OwnerPath, session: SessionDep, ctx: ContextDep, principal: CallerDep, response: Response
) -> IssuedApiKey:
    """Issue an API key for an organisation or a territory; the secret is in this answer only."""
    _managed_owner(session, owner, principal)
    scopes = [scope.value for scope in body.scopes]
    apikeys.check_grantable(principal, owner, scopes)
    key, secret = apikeys.create_key(
        db_session=session,
        owner=owner,
        name=body.name,
        scopes=scopes,
        expires_at=body.expires_at,
        actor=principal.subject,
        source=ctx.source,
    )
    return _issued(key, secret, response)


@router.get("/organisations/{owner}/apikeys", response_model=list[ApiKeyOut])
def list_apikeys(owner: OwnerPath, session: SessionDep, principal: CallerDep) -> list[ApiKeyOut]:
    """Every API key of an owner, usable or not, newest first (never the secrets)."""
    _managed_owner(session, owner, principal)
    return [_out(key) for key in apikeys.list_keys(db_session=session, owner=owner)]


@router.get("/organisations/{owner}/apikeys/{key_id}", response_model=ApiKeyOut)
def get_apikey(owner: OwnerPath, key_id: KeyIdPath, session: SessionDep, principal: CallerDep) -> ApiKeyOut:
    """One API key of an owner (never its secret)."""
    _managed_owner(session, owner, principal)
    return _out(apikeys.get_key(db_session=session, owner=owner, key_id=key_id))


@router.post(
    "/organisations/{owner}/apikeys/{key_id}/rotate", response_model=IssuedApiKey, status_code=status.HTTP_201_CREATED
)
def rotate_apikey(
    owner: OwnerPath,
    key_id: KeyIdPath,
    session: SessionDep,
    ctx: ContextDep,
    principal: CallerDep,
    response: Response,
    body: Annotated[ApiKeyRotate | None, Body()] = None,
) -> IssuedApiKey:
    """Replace an active key by a new one with the same scopes; the old one works until the overlap ends."""
    _managed_owner(session, owner, principal)
    body = body or ApiKeyRotate()
    current = apikeys.get_key(db_session=session, owner=owner, key_id=key_id)
    apikeys.check_grantable(principal, owner, list(current.scopes))
    _, new, secret = apikeys.rotate_key(
        db_session=session,
        owner=owner,
        key_id=key_id,
        overlap=timedelta(seconds=body.overlap_seconds),
        expires_at=body.expires_at,
        actor=principal.subject,
        source=ctx.source,
    )
    return _issued(new, secret, response)


@router.post("/organisations/{owner}/apikeys/{key_id}/revoke", response_model=ApiKeyOut)
def revoke_apikey(
    body: ApiKeyRevoke, owner: OwnerPath, key_id: KeyIdPath, session: SessionDep, ctx: ContextDep, principal: CallerDep
) -> ApiKeyOut:
    """Revoke a key at once, with a reason (revoking it again changes nothing)."""
    _managed_owner(session, owner, principal)
    key = apikeys.revoke_key(
        db_session=session, owner=owner, key_id=key_id, reason=body.reason, actor=principal.subject, source=ctx.source
    )
    return _out(key)


@router.post(
    "/apikeys/verify",
    response_model=VerifiedApiKey,
    responses={
        401: {"description": "apikey.malformed, apikey.unknown, apikey.revoked, apikey.expired, apikey.rotated"}
    },
)
def verify_apikey(body: ApiKeyVerify, session: SessionDep, principal: CallerDep, response: Response) -> VerifiedApiKey:
    """Resolve a presented federated key to its principal (gateways: operators or scope apikeys:verify)."""
    if not (principal.is_operator or apikeys.VERIFY_SCOPE in principal.scopes):
        raise Forbidden("only gateways (scope apikeys:verify) and operators verify keys", code="auth.verify_forbidden")
    verified = apikeys.verify_key(db_session=session, secret=body.key)
    response.headers["Cache-Control"] = "no-store"
    return VerifiedApiKey(
        principal=verified.principal,
        key_id=verified.key.id,
        expires_at=apikeys.as_utc(verified.key.expires_at),
        overlap_until=apikeys.as_utc_or_none(verified.key.overlap_until),
    )
