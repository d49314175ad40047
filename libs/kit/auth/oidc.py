"""Keycloak access tokens verified locally: cached JWKS, RS256/ES256 only, issuer, audience and time checked.

:class:`OidcVerifier` turns a bearer token into a :class:`~kit.auth.principal.Principal` or raises
:class:`TokenRefused` with a machine-readable reason (``token_expired``, ``token_wrong_audience``...). The realm's
signing keys come from its JWKS endpoint; they are cached and fetched again when a token names an unknown ``kid``
(key rotation), at most once per ``min_refresh_interval`` so that tokens with made-up key ids cannot make the
verifier hammer Keycloak. ``alg: none``, HMAC algorithms (the classic RSA-public-key-as-HMAC-secret confusion) and
every algorithm but RS256 and ES256 are refused before any key is looked up.

Roles are read per organisation, as docs/KEYCLOAK.md describes the realm ``maillage``::

    organization.<siren>.resource_access."maillage-api".roles   -> Principal.territory_roles[<siren>]
    realm_access.roles (only "operator")                         -> Principal.realm_roles

never from the top-level ``resource_access``, which merges the roles of every organisation. A service account
(client credentials) that belongs to exactly one organisation speaks for it (``Principal.organisation``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from jwcrypto import jwk, jws  # type: ignore[import-untyped]
from jwcrypto.common import JWException  # type: ignore[import-untyped]

from kit.auth.principal import AuthMethod, Principal, Role

__all__ = [
    "ALLOWED_ALGORITHMS",
    "MAX_LEEWAY_SECONDS",
    "JwksCache",
    "OidcVerifier",
    "TokenRefused",
    "VerifiedToken",
    "looks_like_jwt",
    "principal_from_claims",
]

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS = frozenset({"RS256", "ES256"})
MAX_LEEWAY_SECONDS = 60.0
API_CLIENT_ID = "maillage-api"
KNOWN_REALM_ROLES = frozenset({"operator"})
_KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
_SIREN = re.compile(r"^[0-9]{9}$")
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


class TokenRefused(Exception):
    """A bearer token that must not be trusted; ``reason`` is a short code (``token_expired``...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def looks_like_jwt(credential: str) -> bool:
    """True when ``credential`` has the three-part shape of a compact JWS (says nothing about its validity)."""
    return len(credential) < 16_384 and _JWT_SHAPE.match(credential) is not None


def _b64_json(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenRefused("token_malformed", f"the token's {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise TokenRefused("token_malformed", f"the token's {what} is not a JSON object")
    return value


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [a for a in aud if isinstance(a, str)]
    return []


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRefused("token_malformed", f"claim {name} is not a number")
    return float(value)


class JwksCache:
    """The realm's signing keys, fetched from ``jwks_uri`` and refreshed on an unknown ``kid`` (rate-limited)."""

    def __init__(
        self,
        jwks_uri: str,
        *,
        min_refresh_interval: float = 10.0,
        max_age: float = 3600.0,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.jwks_uri = jwks_uri
        self.min_refresh_interval = min_refresh_interval
        self.max_age = max_age
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport, trust_env=False)
        self._keys: dict[str, jwk.JWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> jwk.JWK | None:
        """The public key ``kid``; fetches the JWKS when it is unknown (or the cache is old), at most once per
        ``min_refresh_interval``. None when the realm does not publish it."""
        now = time.monotonic()
        stale = self._fetched_at is None or now - self._fetched_at > self.max_age
        if kid in self._keys and not stale:
            return self._keys[kid]
        async with self._lock:
            now = time.monotonic()
            recently = self._fetched_at is not None and now - self._fetched_at < self.min_refresh_interval
            if (kid not in self._keys and not recently) or stale:
                await self._fetch()
        return self._keys.get(kid)

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            response = await self._client.get(self.jwks_uri)
            response.raise_for_status()
            keyset = jwk.JWKSet.from_json(response.text)
        except (httpx.HTTPError, JWException, ValueError) as exc:
            # Keep the keys we have: Keycloak being briefly unreachable must not log everybody out.
            log.warning("could not fetch the JWKS from %s: %s", self.jwks_uri, type(exc).__name__)
            self._fetched_at = time.monotonic()
            return
        keys: dict[str, jwk.JWK] = {}
        for key in keyset["keys"]:
            kid = key.get("kid")
            if isinstance(kid, str) and key.get("use", "sig") == "sig" and not key.has_private:
                keys[kid] = key
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def close(self) -> None:
        await self._client.aclose()


def principal_from_claims(claims: Mapping[str, Any], *, api_client_id: str = API_CLIENT_ID) -> Principal:
    """The Principal of verified Keycloak claims: roles per organisation, realm role operator, service accounts'
    organisation. Unknown roles and non-SIREN organisation aliases give no territory role."""
    territory_roles: dict[str, frozenset[Role]] = {}
    organisations = claims.get("organization")
    memberships: list[str] = []
    if isinstance(organisations, dict):
        for alias, entry in organisations.items():
            if not isinstance(alias, str) or not isinstance(entry, dict):
                continue
            memberships.append(alias)
            access = entry.get("resource_access")
            client = access.get(api_client_id) if isinstance(access, dict) else None
            raw = client.get("roles") if isinstance(client, dict) else None
            roles = frozenset(Role(r) for r in raw or [] if isinstance(r, str) and r in Role._value2member_map_)
            if roles and _SIREN.match(alias):
                territory_roles[alias] = roles
    realm_access = claims.get("realm_access")
    raw_realm = realm_access.get("roles") if isinstance(realm_access, dict) else None
    realm_roles = frozenset(r for r in raw_realm or [] if isinstance(r, str) and r in KNOWN_REALM_ROLES)
    # A service account (client credentials carry client_id) member of one organisation acts for it.
    service_account = isinstance(claims.get("client_id"), str)
    organisation = memberships[0] if service_account and len(memberships) == 1 else None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise TokenRefused("token_malformed", "the token has no subject")
    return Principal(
        subject=subject,
        organisation=organisation,
        territory_roles=territory_roles,
        realm_roles=realm_roles,
        auth_method=AuthMethod.OIDC,
    )


@dataclass(frozen=True)
class VerifiedToken:
    """A token that passed every check: its claims and the principal they resolve to."""

    claims: dict[str, Any]
    principal: Principal


class OidcVerifier:
    """Verifies Keycloak access tokens of one realm locally and maps them to principals.

    ``issuer`` is the realm's ``iss`` (e.g. ``http://127.0.0.1:8080/realms/maillage``), ``audience`` the API client
    that must appear in ``aud`` (a string or a list). ``leeway`` (at most 60 s) absorbs clock skew on ``exp`` and
    ``nbf``. ``clock`` returns the current UNIX time (tests move it).
    """

    def __init__(
        self,
        issuer: str,
        *,
        audience: str = API_CLIENT_ID,
        jwks_uri: str | None = None,
        leeway: float = 30.0,
        min_refresh_interval: float = 10.0,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not 0 <= leeway <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY_SECONDS:.0f} seconds")
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.leeway = leeway
        self.clock = clock
        self.jwks = JwksCache(
            jwks_uri or f"{self.issuer}/protocol/openid-connect/certs",
            min_refresh_interval=min_refresh_interval,
            transport=transport,
        )

    async def verify(self, token: str) -> Principal:
        """The principal of a valid access token; :class:`TokenRefused` otherwise."""
        return (await self.verify_claims(token)).principal

    async def verify_claims(self, token: str) -> VerifiedToken:
        """The verified claims and principal of ``token``; :class:`TokenRefused` otherwise."""
        if not looks_like_jwt(token):
            raise TokenRefused("token_malformed", "not a compact JWS")
        header_part, payload_part, _ = token.split(".")
        header = _b64_json(header_part, "header")
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise TokenRefused("token_algorithm_not_allowed", f"alg {alg!r} is refused (RS256 and ES256 only)")
        if "crit" in header or "jku" in header or "jwk" in header or "x5u" in header:
            raise TokenRefused("token_malformed", "header parameters crit, jku, jwk and x5u are refused")
        unverified = _b64_json(payload_part, "payload")
        # The issuer first: a token of another realm (or another server) is told apart without a key lookup.
        if unverified.get("iss") != self.issuer:
            raise TokenRefused("token_wrong_issuer", "the token was not issued by this realm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRefused("token_malformed", "the token names no key (kid)")
        key = await self.jwks.key(kid)
        if key is None:
            raise TokenRefused("token_unknown_key", "the realm publishes no key with this kid")
        if key.get("kty") != _KEY_TYPES[alg]:
            raise TokenRefused("token_algorithm_not_allowed", f"alg {alg} does not match the key type")
        signed = jws.JWS()
        signed.allowed_algs = [alg]
        try:
            signed.deserialize(token)
            signed.verify(key, alg=alg)
        except (JWException, ValueError) as exc:
            raise TokenRefused("token_bad_signature", "the signature does not verify") from exc
        claims = json.loads(signed.payload)
        if not isinstance(claims, dict):
            raise TokenRefused("token_malformed", "the payload is not a JSON object")
        self._check_claims(claims)
        return VerifiedToken(claims=claims, principal=principal_from_claims(claims, api_client_id=self.audience))

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        now = self.clock()
        exp = _number(claims, "exp")
        if exp is None:
            raise TokenRefused("token_malformed", "the token has no expiry (exp)")
        if now > exp + self.leeway:
            raise TokenRefused("token_expired", "the token has expired")
        nbf = _number(claims, "nbf")
        if nbf is not None and now + self.leeway < nbf:
            raise TokenRefused("token_not_yet_valid", "the token is not valid yet (nbf)")
        iat = _number(claims, "iat")
        if iat is not None and now + self.leeway < iat:
            raise TokenRefused("token_not_yet_valid", "the token was issued in the future (iat)")
        if claims.get("iss") != self.issuer:
            raise TokenRefused("token_wrong_issuer", "the token was not issued by this realm")
        if self.audience not in _audiences(claims):
            raise TokenRefused("token_wrong_audience", f"the token is not meant for {self.audience}")
        typ = claims.get("typ")
        if typ is not None and typ != "Bearer":
            raise TokenRefused("token_wrong_type", f"a {typ} token is not an access token")

    async def close(self) -> None:
        await self.jwks.close()
