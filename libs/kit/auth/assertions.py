"""Principal assertions: short-lived EdDSA JWTs by which a gateway tells a service who the caller is.

The gateway authenticates the caller (Keycloak token, federated API key) once, then calls services with
``Authorization: Bearer <assertion>``. An assertion is a compact JWS::

    header  {"alg": "EdDSA", "typ": "maillage-assertion+jwt", "kid": "<key id>"}
    payload {"iss": "maillage-gateway", "aud": "maillage", "iat", "nbf", "exp", "jti", "rid": "<request id>",
             "principal": {<Principal>}}

signed with the gateway's Ed25519 key (``cryptography``). A service holds the gateway's public keys (several during a
rotation) and refuses an assertion that is unsigned, signed by another key, expired, issued in the future, or that
lives longer than :data:`MAX_LIFETIME_SECONDS`. Keys travel as base64url of their 32 raw bytes; the key id is derived
from the public key, so a service never trusts a ``kid`` it was not configured with.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from pydantic import ValidationError

from kit import jws
from kit.auth.oidc import TokenRefused, looks_like_jwt
from kit.auth.principal import Principal

__all__ = [
    "ASSERTION_TYPE",
    "MAX_LIFETIME_SECONDS",
    "AssertionSigner",
    "AssertionVerifier",
    "generate_signing_key",
    "is_assertion",
    "public_key_of",
]

ASSERTION_TYPE = "maillage-assertion+jwt"
ISSUER = "maillage-gateway"
AUDIENCE = "maillage"
DEFAULT_LIFETIME_SECONDS = 30.0
MAX_LIFETIME_SECONDS = 120.0
_CLOCK_SKEW_SECONDS = 5.0


def _key_id(public: Ed25519PublicKey) -> str:
    return jws.b64url(hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).digest()[:12])


def generate_signing_key() -> str:
    """A new Ed25519 private key, as base64url of its 32 raw bytes (keep it secret)."""
    raw = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return jws.b64url(raw)


def public_key_of(signing_key: str) -> str:
    """The public key (base64url raw) of a signing key (base64url raw), to configure on services."""
    private = Ed25519PrivateKey.from_private_bytes(jws.b64url_decode(signing_key))
    return jws.b64url(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def is_assertion(credential: str) -> bool:
    """True when ``credential`` is JWT-shaped and its header says it is a principal assertion (not verified)."""
    if not looks_like_jwt(credential):
        return False
    try:
        header = json.loads(jws.b64url_decode(credential.split(".", 1)[0]))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and header.get("typ") == ASSERTION_TYPE


class AssertionSigner:
    """Signs principal assertions with the gateway's Ed25519 key."""

    def __init__(
        self, signing_key: str, *, lifetime: float = DEFAULT_LIFETIME_SECONDS, clock: Callable[[], float] = time.time
    ) -> None:
        if not 0 < lifetime <= MAX_LIFETIME_SECONDS:
            raise ValueError(f"an assertion lives at most {MAX_LIFETIME_SECONDS:.0f} seconds")
        self._private = Ed25519PrivateKey.from_private_bytes(jws.b64url_decode(signing_key))
        self.kid = _key_id(self._private.public_key())
        self.lifetime = lifetime
        self.clock = clock

    @property
    def public_key(self) -> str:
        return jws.b64url(self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, principal: Principal, *, request_id: str | None = None) -> str:
        """A compact JWS asserting ``principal`` for ``lifetime`` seconds."""
        now = int(self.clock())
        header = {"alg": "EdDSA", "typ": ASSERTION_TYPE, "kid": self.kid}
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + int(self.lifetime),
            "jti": uuid.uuid4().hex,
            "principal": principal.model_dump(mode="json"),
        }
        if request_id:
            payload["rid"] = request_id
        return jws.sign(self._private, header, payload)


class AssertionVerifier:
    """Verifies assertions against the configured gateway public keys; :class:`TokenRefused` with a reason."""

    def __init__(self, public_keys: Iterable[str], *, clock: Callable[[], float] = time.time) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for encoded in public_keys:
            public = Ed25519PublicKey.from_public_bytes(jws.b64url_decode(encoded.strip()))
            self._keys[_key_id(public)] = public
        self.clock = clock

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def verify(self, assertion: str) -> Principal:
        """The asserted principal; :class:`TokenRefused` (``assertion_*`` reasons) otherwise."""
        if not looks_like_jwt(assertion):
            raise TokenRefused("assertion_malformed", "not a compact JWS")
        try:
            parsed = jws.CompactJws.parse(assertion)
        except ValueError as exc:
            raise TokenRefused("assertion_malformed", f"the assertion is not a compact JWS: {exc}") from exc
        header, payload = parsed.header, parsed.payload
        if header.get("alg") != "EdDSA" or header.get("typ") != ASSERTION_TYPE:
            raise TokenRefused("assertion_unsigned", "only EdDSA-signed principal assertions are accepted")
        key = self._keys.get(str(header.get("kid")))
        if key is None:
            raise TokenRefused("assertion_unknown_key", "the assertion is not signed by a trusted gateway key")
        if not parsed.verified_by(key):
            raise TokenRefused("assertion_bad_signature", "the assertion's signature does not verify")
        now = self.clock()
        iat, exp = payload.get("iat"), payload.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int):
            raise TokenRefused("assertion_malformed", "the assertion has no iat or exp")
        if exp - iat > MAX_LIFETIME_SECONDS:
            raise TokenRefused("assertion_too_long", "the assertion lives longer than services accept")
        if now > exp + _CLOCK_SKEW_SECONDS:
            raise TokenRefused("assertion_expired", "the assertion has expired")
        if iat > now + _CLOCK_SKEW_SECONDS:
            raise TokenRefused("assertion_not_yet_valid", "the assertion was issued in the future")
        if payload.get("iss") != ISSUER or payload.get("aud") != AUDIENCE:
            raise TokenRefused("assertion_wrong_audience", "the assertion is not meant for Maillage services")
        try:
            return Principal.model_validate(payload.get("principal"))
        except ValidationError as exc:
            raise TokenRefused("assertion_malformed", "the asserted principal is invalid") from exc
