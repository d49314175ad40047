"""Federated API keys issued by the registry to partner organisations (SIRET) and consumer territories (SIREN).

A key reads ``mlg_prt_<random><checksum>`` (:mod:`kit.auth.keys`). Only its 8-character lookup prefix and its
SHA-256 are stored; the secret is shown once, in the answer that issued it.

```
active ──rotate──> rotating (old and new both valid until overlap_until) ──> rotated (refused)
active | rotating ──revoke (reason)──> revoked (refused at once)
any unrevoked key past expires_at ──> expired (refused at once; sweep_expired announces it)
```

Verification reads the dates itself, so nothing has to run for an expired key to be refused: :func:`sweep_expired`
only tells the gateways. Every change emits ``registry.apikey.<action>.<key id>`` through the outbox, with the key's
id, owner, lookup prefix, scopes and dates, never the secret or its hash.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, func, or_, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Column, Field, Session, SQLModel, col, select

from contracts.events.registry import ApiKeyCreatedV1, ApiKeyExpiredV1, ApiKeyRevokedV1, ApiKeyRotatedV1
from contracts.identifiers import SubjectTokenError, validate_siren, validate_siret
from kit.auth import AuthMethod, KeyFormatError, Principal, Role, issue_key, parse_key, verify_secret
from kit.db import Database
from kit.errors import Conflict, Forbidden, NotFound, Unauthorized, Unprocessable
from kit.outbox import enqueue
from registry.models import Organisation, Territory

__all__ = [
    "LocalKeyVerifier",
    "DEFAULT_LIFETIME",
    "DEFAULT_OVERLAP",
    "KEY_KIND",
    "LAST_USED_GRANULARITY",
    "MAX_ACTIVE_KEYS",
    "MAX_LIFETIME",
    "MAX_OVERLAP",
    "VERIFY_SCOPE",
    "ApiKey",
    "ApiKeyScope",
    "ApiKeyState",
    "OwnerKind",
    "Verified",
    "as_utc",
    "as_utc_or_none",
    "check_grantable",
    "create_key",
    "get_key",
    "list_keys",
    "principal_of",
    "require_manager",
    "resolve_owner",
    "revoke_key",
    "rotate_key",
    "sweep_expired_keys",
    "sweep_expired",
    "utcnow",
    "verify_key",
]

log = logging.getLogger(__name__)

KEY_KIND = "prt"
DEFAULT_LIFETIME = timedelta(days=90)
MAX_LIFETIME = timedelta(days=400)
DEFAULT_OVERLAP = timedelta(hours=24)
MAX_OVERLAP = timedelta(days=7)
# A verification writes last_used_at at most this often per key: gateways verify on every cache miss.
LAST_USED_GRANULARITY = timedelta(minutes=1)
# Usable keys per owner: a leaked manager key must not be able to mint keys without bound.
MAX_ACTIVE_KEYS = 50
# Gateways call /v1/apikeys/verify with this scope; it is never put on a federated key, so keys can't probe keys.
VERIFY_SCOPE = "apikeys:verify"


def utcnow() -> datetime:
    """The current time (tests move it)."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime: SQLite hands back naive ones, and every stored time is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def as_utc_or_none(moment: datetime | None) -> datetime | None:
    """:func:`as_utc`, passing None through."""
    return None if moment is None else as_utc(moment)


class ApiKeyScope(StrEnum):
    """What a federated key may do."""

    QUERY = "query"  # run queries under the owner's active agreements
    CATALOG_READ = "catalog:read"
    AGREEMENTS_READ = "agreements:read"
    AGREEMENTS_WRITE = "agreements:write"
    APIKEYS_MANAGE = "apikeys:manage"  # issue, rotate and revoke the owner's keys


class ApiKeyState(StrEnum):
    ACTIVE = "active"
    ROTATING = "rotating"  # replaced, still valid until overlap_until
    ROTATED = "rotated"  # replaced, overlap over
    REVOKED = "revoked"
    EXPIRED = "expired"


class OwnerKind(StrEnum):
    ORGANISATION = "organisation"
    TERRITORY = "territory"


def _timestamp(*, nullable: bool, index: bool = False) -> Any:
    # timestamptz on PostgreSQL: the stored instant does not depend on the server's TimeZone.
    return Column(DateTime(timezone=True), nullable=nullable, index=index)


class ApiKey(SQLModel, table=True):
    """A federated API key: its owner, scopes and dates, and only the lookup prefix and hash of its secret."""

    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=36)
    owner: str = Field(max_length=14, index=True, description="SIRET of an organisation or SIREN of a territory")
    name: str = Field(max_length=100)
    lookup_prefix: str = Field(max_length=8, unique=True)
    secret_hash: str = Field(max_length=64)
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp(nullable=False))
    created_by: str = Field(max_length=200)
    expires_at: datetime = Field(sa_column=_timestamp(nullable=False, index=True))
    revoked_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    revoked_by: str | None = Field(default=None, max_length=200)
    revoke_reason: str | None = Field(default=None, max_length=500)
    last_used_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    rotated_from: str | None = Field(default=None, max_length=36, description="the key this one replaced")
    replaced_by: str | None = Field(default=None, max_length=36, description="the key that replaced this one")
    overlap_until: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    expiry_announced_at: datetime | None = Field(
        default=None, sa_column=_timestamp(nullable=True), description="when sweep_expired emitted the expiry"
    )

    def state(self, now: datetime) -> ApiKeyState:
        """The key's state at ``now``."""
        if self.revoked_at is not None:
            return ApiKeyState.REVOKED
        if now >= as_utc(self.expires_at):
            return ApiKeyState.EXPIRED
        if self.overlap_until is not None:
            return ApiKeyState.ROTATING if now < as_utc(self.overlap_until) else ApiKeyState.ROTATED
        return ApiKeyState.ACTIVE


@dataclass(frozen=True)
class Verified:
    """A key that passed verification and the principal it stands for."""

    key: ApiKey
    principal: Principal


# --- owners and permissions -------------------------------------------------------------------------------------


def resolve_owner(*, db_session: Session, owner: str) -> OwnerKind:
    """Whether ``owner`` is an admitted organisation (SIRET) or a territory (SIREN); NotFound otherwise."""
    try:
        if len(owner) == 14:
            validate_siret(owner)
        else:
            validate_siren(owner)
    except SubjectTokenError as exc:
        raise Unprocessable(f"owner must be a SIRET or a SIREN: {exc}", code="apikey.invalid_owner") from exc
    if len(owner) == 14:
        if db_session.get(Organisation, owner) is None:
            raise NotFound(f"organisation {owner} is not registered", code="organisation.not_found")
        return OwnerKind.ORGANISATION
    if db_session.get(Territory, owner) is None:
        raise NotFound(f"territory {owner} is not in the federation", code="territory.not_found")
    return OwnerKind.TERRITORY


def _administers(principal: Principal, owner: str) -> bool:
    """Operators, and for a territory its admins and stewards, have full control of the owner's keys."""
    if principal.is_operator:
        return True
    return len(owner) == 9 and (principal.has_role(owner, Role.ADMIN) or principal.has_role(owner, Role.STEWARD))


def require_manager(principal: Principal, owner: str) -> None:
    """Forbidden unless the principal may manage ``owner``'s keys."""
    if _administers(principal, owner):
        return
    if principal.organisation == owner and ApiKeyScope.APIKEYS_MANAGE in principal.scopes:
        return
    raise Forbidden(
        f"only operators, {owner}'s administrators or its keys with scope apikeys:manage manage its keys",
        code="auth.apikey_manager_required",
    )


def check_grantable(principal: Principal, owner: str, scopes: list[str]) -> None:
    """Forbidden when a delegated manager (a key with apikeys:manage) would grant scopes it does not hold."""
    if _administers(principal, owner):
        return
    missing = sorted(set(scopes) - principal.scopes)
    if missing:
        raise Forbidden(
            f"you cannot grant scopes you do not hold: {', '.join(missing)}", code="apikey.scope_escalation"
        )


# --- validation ---------------------------------------------------------------------------------------------------


def _scopes(scopes: list[str]) -> list[str]:
    known = {scope.value for scope in ApiKeyScope}
    unknown = sorted({str(scope) for scope in scopes} - known)
    if unknown:
        raise Unprocessable(f"unknown scopes: {', '.join(unknown)}", code="apikey.unknown_scope")
    if not scopes:
        raise Unprocessable("a key needs at least one scope", code="apikey.no_scope")
    return sorted({str(scope) for scope in scopes})


def _expiry(expires_at: datetime | None, *, now: datetime, default: timedelta) -> datetime:
    if expires_at is None:
        return now + min(default, MAX_LIFETIME)
    if expires_at.tzinfo is None:
        raise Unprocessable("expires_at needs a time zone", code="apikey.invalid_expiry")
    expires_at = expires_at.astimezone(UTC)
    if expires_at <= now:
        raise Unprocessable("expires_at is in the past", code="apikey.invalid_expiry")
    if expires_at > now + MAX_LIFETIME:
        raise Unprocessable(f"a key lives at most {MAX_LIFETIME.days} days", code="apikey.invalid_expiry")
    return expires_at


def _overlap(overlap: timedelta) -> timedelta:
    if overlap < timedelta(0) or overlap > MAX_OVERLAP:
        raise Unprocessable(f"overlap must be between 0 and {MAX_OVERLAP.days} days", code="apikey.invalid_overlap")
    return overlap


# --- service ------------------------------------------------------------------------------------------------------


def _usable_count(db_session: Session, owner: str, now: datetime) -> int:
    statement = (
        select(func.count())
        .select_from(ApiKey)
        .where(
            col(ApiKey.owner) == owner,
            col(ApiKey.revoked_at).is_(None),
            col(ApiKey.expires_at) > now,
            or_(col(ApiKey.overlap_until).is_(None), col(ApiKey.overlap_until) > now),
        )
    )
    return int(db_session.exec(statement).one())


def _new_key(db_session: Session, key_id: str | None = None, **values: Any) -> tuple[ApiKey, str]:
    # 62^8 lookup prefixes: a clash is very unlikely, but the unique index would turn it into a 409; draw again.
    for _ in range(5):
        issued = issue_key(KEY_KIND)
        taken = db_session.exec(select(ApiKey.id).where(col(ApiKey.lookup_prefix) == issued.lookup_prefix)).first()
        if taken is None:
            key = ApiKey(
                id=key_id or str(uuid.uuid4()),
                lookup_prefix=issued.lookup_prefix,
                secret_hash=issued.secret_hash,
                **values,
            )
            db_session.add(key)
            return key, issued.secret
    raise Conflict("could not draw a free lookup prefix; try again", code="apikey.prefix_clash")


def _created_event(key: ApiKey) -> ApiKeyCreatedV1:
    return ApiKeyCreatedV1(
        key_id=key.id,
        owner=key.owner,
        name=key.name,
        lookup_prefix=key.lookup_prefix,
        scopes=list(key.scopes),
        created_at=as_utc(key.created_at),
        expires_at=as_utc(key.expires_at),
        rotated_from=key.rotated_from,
    )


def create_key(
    *,
    db_session: Session,
    owner: str,
    name: str,
    scopes: list[str],
    expires_at: datetime | None,
    actor: str,
    source: str,
) -> tuple[ApiKey, str]:
    """Issue a key for ``owner``; returns the row and the secret (shown once). Emits ``registry.apikey.created``."""
    now = utcnow()
    granted = _scopes(scopes)
    expiry = _expiry(expires_at, now=now, default=DEFAULT_LIFETIME)
    if _usable_count(db_session, owner, now) >= MAX_ACTIVE_KEYS:
        raise Conflict(
            f"{owner} already holds {MAX_ACTIVE_KEYS} usable keys; revoke some first", code="apikey.limit_reached"
        )
    key, secret = _new_key(
        db_session, owner=owner, name=name, scopes=granted, created_at=now, created_by=actor, expires_at=expiry
    )
    enqueue(db_session, _created_event(key), source=source)
    return key, secret


def list_keys(*, db_session: Session, owner: str) -> list[ApiKey]:
    """Every key of ``owner``, usable or not, newest first."""
    statement = select(ApiKey).where(col(ApiKey.owner) == owner).order_by(col(ApiKey.created_at).desc(), col(ApiKey.id))
    return list(db_session.exec(statement).all())


def get_key(*, db_session: Session, owner: str, key_id: str) -> ApiKey:
    """One key of ``owner``; NotFound when it does not exist or belongs to someone else."""
    key = db_session.get(ApiKey, key_id)
    if key is None or key.owner != owner:
        raise NotFound(f"{owner} has no API key {key_id}", code="apikey.not_found")
    return key


def rotate_key(
    *,
    db_session: Session,
    owner: str,
    key_id: str,
    overlap: timedelta = DEFAULT_OVERLAP,
    expires_at: datetime | None = None,
    actor: str,
    source: str,
) -> tuple[ApiKey, ApiKey, str]:
    """Replace an active key by a new one with the same scopes; the old stays valid until now + ``overlap``.

    Returns (old, new, new secret). The new key lives as long as the old was issued for, unless ``expires_at`` says
    otherwise. Emits ``registry.apikey.created`` (new) and ``registry.apikey.rotated`` (old).
    """
    now = utcnow()
    overlap = _overlap(overlap)
    old = get_key(db_session=db_session, owner=owner, key_id=key_id)
    state = old.state(now)
    if state is not ApiKeyState.ACTIVE:
        raise Conflict(f"API key {key_id} is {state}; only an active key can be rotated", code="apikey.not_active")
    lifetime = as_utc(old.expires_at) - as_utc(old.created_at)
    expiry = _expiry(expires_at, now=now, default=lifetime)
    new_id = str(uuid.uuid4())
    # One conditional update decides, on PostgreSQL and SQLite alike: of two concurrent rotations, or a rotation
    # racing a revocation, exactly one wins and the other answers 409.
    claimed = db_session.execute(
        update(ApiKey)
        .where(
            col(ApiKey.id) == old.id,
            col(ApiKey.revoked_at).is_(None),
            col(ApiKey.overlap_until).is_(None),
            col(ApiKey.expires_at) > now,
        )
        .values(overlap_until=now + overlap, replaced_by=new_id)
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        raise Conflict(f"API key {key_id} was rotated or revoked concurrently; reload it", code="apikey.not_active")
    db_session.refresh(old)
    assert old.overlap_until is not None
    new, secret = _new_key(
        db_session,
        new_id,
        owner=owner,
        name=old.name,
        scopes=list(old.scopes),
        created_at=now,
        created_by=actor,
        expires_at=expiry,
        rotated_from=old.id,
    )
    enqueue(db_session, _created_event(new), source=source)
    enqueue(
        db_session,
        ApiKeyRotatedV1(
            key_id=old.id,
            owner=old.owner,
            lookup_prefix=old.lookup_prefix,
            scopes=list(old.scopes),
            rotated_at=now,
            overlap_until=as_utc(old.overlap_until),
            expires_at=as_utc(old.expires_at),
            replaced_by=new.id,
        ),
        source=source,
    )
    return old, new, secret


def revoke_key(*, db_session: Session, owner: str, key_id: str, reason: str, actor: str, source: str) -> ApiKey:
    """Revoke a key at once; emits ``registry.apikey.revoked``. Revoking a revoked key changes nothing."""
    now = utcnow()
    key = get_key(db_session=db_session, owner=owner, key_id=key_id)
    if key.revoked_at is not None:
        return key  # idempotent: a retried revocation keeps the first reason and emits nothing
    # Conditional: of two concurrent revocations one records its reason and emits, the other changes nothing.
    won = db_session.execute(
        update(ApiKey)
        .where(col(ApiKey.id) == key.id, col(ApiKey.revoked_at).is_(None))
        .values(revoked_at=now, revoked_by=actor, revoke_reason=reason)
        .execution_options(synchronize_session=False)
    )
    db_session.refresh(key)
    if getattr(won, "rowcount", 0) != 1:
        return key
    enqueue(
        db_session,
        ApiKeyRevokedV1(
            key_id=key.id,
            owner=key.owner,
            lookup_prefix=key.lookup_prefix,
            scopes=list(key.scopes),
            revoked_at=now,
            reason=reason,
        ),
        source=source,
    )
    return key


def principal_of(key: ApiKey) -> Principal:
    """The principal a federated key stands for: its owner, its scopes; analysts of their territory for a SIREN."""
    roles = {key.owner: frozenset({Role.ANALYST})} if len(key.owner) == 9 else {}
    return Principal(
        subject=f"apikey:{key.id}",
        organisation=key.owner,
        territory_roles=roles,
        scopes=frozenset(key.scopes),
        auth_method=AuthMethod.API_KEY,
    )


# Compared against when no row matches, so an unknown prefix costs the same hash comparison as a known one.
_NO_HASH = "0" * 64


def _refuse(detail: str, code: str) -> Unauthorized:
    return Unauthorized(detail, code=code)


def verify_key(*, db_session: Session, secret: str) -> Verified:
    """The principal of a presented federated key; Unauthorized with ``apikey.<reason>`` otherwise."""
    try:
        parsed = parse_key(secret)
    except KeyFormatError as exc:
        raise _refuse(f"not a well-formed key: {exc}", "apikey.malformed") from exc
    if parsed.kind != KEY_KIND:
        # Decided before any lookup, like the checksum: only mlg_prt_ keys are federated keys.
        raise _refuse(f"not a federated API key (mlg_{KEY_KIND}_...)", "apikey.malformed")
    key = db_session.exec(select(ApiKey).where(col(ApiKey.lookup_prefix) == parsed.lookup_prefix)).first()
    matches = verify_secret(secret, key.secret_hash if key is not None else _NO_HASH)
    if key is None or not matches:
        raise _refuse("unknown API key", "apikey.unknown")
    now = utcnow()
    state = key.state(now)
    if state is ApiKeyState.REVOKED:
        raise _refuse("this API key was revoked", "apikey.revoked")
    if state is ApiKeyState.EXPIRED:
        raise _refuse("this API key has expired", "apikey.expired")
    if state is ApiKeyState.ROTATED:
        raise _refuse("this API key was replaced and its overlap is over", "apikey.rotated")
    _touch(db_session, key, now)
    return Verified(key=key, principal=principal_of(key))


def _touch(db_session: Session, key: ApiKey, now: datetime) -> None:
    cutoff = now - LAST_USED_GRANULARITY
    if key.last_used_at is not None and as_utc(key.last_used_at) > cutoff:
        return
    # Conditional, so concurrent verifications of one key write it once per minute at most.
    db_session.execute(
        update(ApiKey)
        .where(col(ApiKey.id) == key.id, or_(col(ApiKey.last_used_at).is_(None), col(ApiKey.last_used_at) <= cutoff))
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    set_committed_value(key, "last_used_at", now)


def sweep_expired(*, db_session: Session, source: str, limit: int = 500) -> int:
    """Emit ``registry.apikey.expired`` for keys that expired since the last sweep; returns how many."""
    now = utcnow()
    statement = (
        select(ApiKey)
        .where(
            col(ApiKey.expiry_announced_at).is_(None),
            col(ApiKey.expires_at) <= now,
            col(ApiKey.revoked_at).is_(None),
            # A rotated key whose overlap ended before its expiry was already announced by its rotation.
            or_(col(ApiKey.overlap_until).is_(None), col(ApiKey.overlap_until) > col(ApiKey.expires_at)),
        )
        .order_by(col(ApiKey.expires_at))
        .limit(limit)
        .with_for_update(skip_locked=True)  # two registry replicas sweeping at once announce each key once
    )
    announced = 0
    for key in db_session.exec(statement).all():
        # Conditional, so two sweeps racing on SQLite (where FOR UPDATE is a no-op) still announce a key once.
        marked = db_session.execute(
            update(ApiKey)
            .where(col(ApiKey.id) == key.id, col(ApiKey.expiry_announced_at).is_(None))
            .values(expiry_announced_at=now)
            .execution_options(synchronize_session=False)
        )
        if getattr(marked, "rowcount", 0) != 1:
            continue
        set_committed_value(key, "expiry_announced_at", now)
        announced += 1
        enqueue(
            db_session,
            ApiKeyExpiredV1(
                key_id=key.id,
                owner=key.owner,
                lookup_prefix=key.lookup_prefix,
                scopes=list(key.scopes),
                expires_at=as_utc(key.expires_at),
            ),
            source=source,
        )
    return announced


def sweep_expired_keys(database: Database, *, source: str) -> int:
    """One :func:`sweep_expired` in its own transaction (the registry runs it every minute)."""
    with database.unit_of_work() as session:
        swept = sweep_expired(db_session=session, source=source)
    if swept:
        log.info("announced %d expired API keys", swept)
    return swept


class LocalKeyVerifier:
    """The registry verifies federated keys itself, in its own database (the kit's :class:`KeyVerifier`)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def verify(self, secret: str) -> Principal | None:
        """The key's principal; None for a key that is not a federated key; Unauthorized ``apikey.<reason>``."""
        try:
            if parse_key(secret).kind != KEY_KIND:
                return None
        except KeyFormatError:
            return None
        return await asyncio.to_thread(self._verify, secret)

    def _verify(self, secret: str) -> Principal:
        with self.database.unit_of_work() as session:
            try:
                return verify_key(db_session=session, secret=secret).principal
            except Unauthorized as refused:
                refused.headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                raise
