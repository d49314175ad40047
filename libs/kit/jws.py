"""Compact JWS with Ed25519 (EdDSA): what consent receipts and the gateway's principal assertions are made of.

Only the mechanics live here — base64url, the signing input, the signature, splitting a token into its parts —;
each caller checks its own header (``typ``, ``kid``) and claims.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["CompactJws", "b64url", "b64url_decode", "sign"]


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The bytes of base64url text, padded or not; ValueError when it is not base64url."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(value: dict[str, Any], canonical: bool) -> bytes:
    if canonical:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def sign(
    private: Ed25519PrivateKey, header: dict[str, Any], payload: dict[str, Any], *, canonical: bool = False
) -> str:
    """``header.payload.signature``; ``canonical`` sorts the payload's keys (the same document, the same bytes)."""
    signing_input = b64url(_json(header, False)) + "." + b64url(_json(payload, canonical))
    return signing_input + "." + b64url(private.sign(signing_input.encode("ascii")))


@dataclass(frozen=True)
class CompactJws:
    """A token split into its decoded parts (nothing verified yet)."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @classmethod
    def parse(cls, token: str) -> CompactJws:
        """ValueError when ``token`` is not three base64url parts whose first two are JSON objects."""
        parts = token.strip().split(".")
        if len(parts) != 3:
            raise ValueError("a compact JWS is header.payload.signature")
        try:
            header = json.loads(b64url_decode(parts[0]))
            payload = json.loads(b64url_decode(parts[1]))
            signature = b64url_decode(parts[2])
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError("the parts are not base64url JSON") from exc
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise ValueError("the header and the payload are JSON objects")
        return cls(header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)

    def verified_by(self, key: Ed25519PublicKey) -> bool:
        try:
            key.verify(self.signature, self.signing_input)
        except InvalidSignature:
            return False
        return True
