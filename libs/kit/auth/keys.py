"""Bootstrap and federated API keys: typed prefix, checksum, lookup prefix, hash-only storage.

A key reads ``mlg_<kind>_<random><checksum>``: ``kind`` is a short lowercase word (``adm``, ``stw``, ``prt``...),
``random`` is 32 base62 characters (190 bits) and ``checksum`` the CRC32 of everything before it in 6 base62
characters. The typed prefix makes leaked keys recognisable by secret scanners; the checksum lets a malformed key be
refused without any database lookup. Only :func:`hash_secret` of a key and its lookup prefix are ever stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import zlib
from dataclasses import dataclass

__all__ = ["IssuedKey", "KeyFormatError", "ParsedKey", "hash_secret", "issue_key", "parse_key", "verify_secret"]

_ALPHABET = string.digits + string.ascii_letters
_RANDOM_LEN = 32
_CHECKSUM_LEN = 6
_LOOKUP_LEN = 8
_KEY_RE = re.compile(rf"^mlg_([a-z]{{2,8}})_([0-9A-Za-z]{{{_RANDOM_LEN + _CHECKSUM_LEN}}})$")


class KeyFormatError(ValueError):
    """The string is not a well-formed Maillage key (wrong shape or checksum)."""


@dataclass(frozen=True, slots=True)
class ParsedKey:
    kind: str
    lookup_prefix: str
    secret: str


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly issued key. ``secret`` is shown once and never stored."""

    kind: str
    secret: str
    lookup_prefix: str
    secret_hash: str


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECKSUM_LEN)


def issue_key(kind: str) -> IssuedKey:
    """Generate a new key of ``kind`` with its lookup prefix and hash."""
    if not re.fullmatch(r"[a-z]{2,8}", kind):
        raise ValueError(f"key kind must be 2-8 lowercase letters, got {kind!r}")
    random_part = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))
    body = f"mlg_{kind}_{random_part}"
    secret = body + _checksum(body)
    return IssuedKey(kind=kind, secret=secret, lookup_prefix=random_part[:_LOOKUP_LEN], secret_hash=hash_secret(secret))


def parse_key(secret: str) -> ParsedKey:
    """Check the shape and checksum of a presented key; raise :class:`KeyFormatError` when malformed."""
    match = _KEY_RE.match(secret)
    if match is None:
        raise KeyFormatError("not a Maillage key")
    kind, tail = match.groups()
    random_part = tail[:_RANDOM_LEN]
    body = f"mlg_{kind}_{random_part}"
    if not hmac.compare_digest(_checksum(body), tail[_RANDOM_LEN:]):
        raise KeyFormatError("key checksum does not match")
    return ParsedKey(kind=kind, lookup_prefix=random_part[:_LOOKUP_LEN], secret=secret)


def hash_secret(secret: str) -> str:
    """SHA-256 of the key: keys carry 190 random bits, so a slow password hash would add nothing."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def verify_secret(secret: str, secret_hash: str) -> bool:
    """Constant-time comparison of a presented key with a stored hash."""
    return hmac.compare_digest(hash_secret(secret), secret_hash)
