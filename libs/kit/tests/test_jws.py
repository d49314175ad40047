from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kit import jws


def test_signed_tokens_verify_with_their_key_only_and_canonical_payloads_are_stable() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    token = jws.sign(key, {"alg": "EdDSA"}, {"b": 1, "a": "é"}, canonical=True)
    assert token == jws.sign(key, {"alg": "EdDSA"}, {"a": "é", "b": 1}, canonical=True)  # Ed25519 is deterministic
    parsed = jws.CompactJws.parse(token)
    assert parsed.payload == {"a": "é", "b": 1} and parsed.header == {"alg": "EdDSA"}
    assert parsed.verified_by(key.public_key()) and not parsed.verified_by(other.public_key())
    header, payload, signature = token.split(".")
    forged = jws.b64url(b'{"a": 2}')
    tampered = jws.CompactJws.parse(f"{header}.{forged}.{signature}")
    assert not tampered.verified_by(key.public_key())


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!!.e30.AA", "e30.W10.AA", "bm90IGpzb24.e30.AA"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError):
        jws.CompactJws.parse(token)
