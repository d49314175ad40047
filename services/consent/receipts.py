"""Consent receipts: compact JWS (EdDSA, Ed25519) signed with the territory's key, verifiable offline.

A receipt states one change of one record (ISO/IEC TS 27560 fields, the subject as a pseudonym). Its JWS header
names the key (``kid``); the territory's public keys are published as a JWKS (``GET
/v1/territories/{siren}/consent/keys``), so anyone holding a receipt checks it without calling the service::

    from consent.receipts import verify
    payload = verify(receipt, jwks)  # raises InvalidReceipt with a reason

Keys: the territory's Ed25519 private key is derived from the service's secret key (HMAC-SHA256 of
"maillage/receipts/v1/<siren>"), so it survives restarts without a key file; rotating the secret rotates the keys
(keep the old JWKS to check old receipts).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kit import jws

__all__ = ["InvalidReceipt", "ReceiptSigner", "TYPE", "verify"]

TYPE = "maillage-consent-receipt+jws"


class InvalidReceipt(ValueError):
    """A receipt that does not verify; ``reason`` is machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ReceiptSigner:
    """The signing key of one territory."""

    territory: str
    private_key: Ed25519PrivateKey

    @classmethod
    def derive(cls, secret: str, territory: str) -> ReceiptSigner:
        seed = hmac.new(secret.encode("utf-8"), f"maillage/receipts/v1/{territory}".encode(), hashlib.sha256).digest()
        return cls(territory, Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def kid(self) -> str:
        return f"{self.territory}-{hashlib.sha256(self.public_bytes).hexdigest()[:16]}"

    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": jws.b64url(self.public_bytes),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }

    def sign(self, payload: dict[str, Any]) -> str:
        return jws.sign(self.private_key, {"alg": "EdDSA", "kid": self.kid, "typ": TYPE}, payload, canonical=True)


def verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """The payload of ``token`` if a key of ``jwks`` signed it; InvalidReceipt otherwise."""
    try:
        parsed = jws.CompactJws.parse(token)
    except ValueError as exc:
        raise InvalidReceipt("receipt.malformed", f"a receipt is a compact JWS: {exc}") from None
    header = parsed.header
    if header.get("alg") != "EdDSA" or header.get("typ") != TYPE:
        raise InvalidReceipt("receipt.algorithm", "only EdDSA consent receipts are accepted")
    keys = [k for k in jwks.get("keys", []) if isinstance(k, dict) and k.get("kid") == header.get("kid")]
    if not keys:
        raise InvalidReceipt("receipt.unknown_key", f"no published key {str(header.get('kid'))[:40]!r}")
    key = keys[0]
    if key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
        raise InvalidReceipt("receipt.unknown_key", "the named key is not an Ed25519 key")
    try:
        public = Ed25519PublicKey.from_public_bytes(jws.b64url_decode(str(key.get("x", ""))))
    except ValueError as exc:
        raise InvalidReceipt("receipt.unknown_key", "the named key is not a valid Ed25519 key") from exc
    if not parsed.verified_by(public):
        raise InvalidReceipt("receipt.bad_signature", "the signature does not match the receipt")
    return parsed.payload
