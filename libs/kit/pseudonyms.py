"""Pseudonymous subject ids: a keyed hash of a citizen's identifier, with one key per territory.

The consent service turns the identifier a citizen gives (the value of the datasets' ``subject_key``: a water meter
number, a transport card number) into ``pseudonym(key, identifier)`` as soon as it receives it and keeps only that.
The exchange writes the first 64 bits of the same HMAC into each stored row (hidden column ``__maillage_sh``), so
consent events name subjects the exchange can match, and the k-anonymity count counts the same values. Neither side
stores the identifier; without the territory's key a pseudonym cannot be linked back to one by trying candidates.

Keys: ``territory_key(secret, siren)`` = HMAC-SHA256(secret, "maillage/pseudonym/v1/<siren>"); the node's secret is
the setting ``MAILLAGE_PSEUDONYM_SECRET`` shared by the consent service and the exchange of a node.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = [
    "DEVELOPMENT_SECRET",
    "PSEUDONYM_VERSION",
    "pseudonym",
    "pseudonym64",
    "pseudonym_sql",
    "territory_key",
]

PSEUDONYM_VERSION = "hmac-sha256-v1"
# The development default (refused outside development by the settings, like every placeholder secret).
DEVELOPMENT_SECRET = "maillage-development-pseudonym-secret"
_BLOCK = 64  # SHA-256's block size, for HMAC's pads


def territory_key(secret: str | bytes, siren: str) -> bytes:
    """The pseudonymisation key of territory ``siren``, derived from the node's secret."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(raw, f"maillage/pseudonym/v1/{siren}".encode("ascii"), hashlib.sha256).digest()


def pseudonym(key: bytes, identifier: str) -> str:
    """The pseudonymous subject id of ``identifier`` (64 hex digits)."""
    return hmac.new(key, identifier.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonym64(pseudonym_hex: str) -> int:
    """The first 64 bits of a pseudonym, as the exchange stores them (an unsigned integer)."""
    if len(pseudonym_hex) != 64:
        raise ValueError("a pseudonym has 64 hex digits")
    return int(pseudonym_hex[:16], 16)


def pseudonym_sql(column: str, key: bytes) -> str:
    """DuckDB SQL computing :func:`pseudonym64` of ``column`` (a quoted identifier) as a UBIGINT: HMAC-SHA256 written
    out with the key's pads (DuckDB has no HMAC function). The column's text is hashed (integers as their decimal
    digits, as ``str`` gives them); NULL stays NULL. The SQL embeds the key: it runs in ingestion only, never in a
    query worker, and is never logged."""
    padded = key if len(key) <= _BLOCK else hashlib.sha256(key).digest()
    padded = padded.ljust(_BLOCK, b"\0")
    inner = bytes(b ^ 0x36 for b in padded).hex()
    outer = bytes(b ^ 0x5C for b in padded).hex()
    digest = f"sha256(unhex('{outer}') || unhex(sha256(unhex('{inner}') || encode(CAST({column} AS VARCHAR)))))"
    return f"CAST(('0x' || substr({digest}, 1, 16)) AS UBIGINT)"
