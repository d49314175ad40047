"""Federated API keys verified by the registry, cached for a few seconds.

A malformed key is refused locally (typed prefix and checksum) without any network call; a verified principal is
cached ``ttl`` seconds, a refusal ``negative_ttl`` seconds, keyed by the key's SHA-256 (never the key itself).
:meth:`RegistryKeyVerifier.forget_prefix` drops a key's cached answers when a revocation event names its prefix.
"""

from __future__ import annotations

import time

import httpx

from kit.auth.keys import KeyFormatError, hash_secret, parse_key
from kit.auth.principal import Principal
from kit.errors import ServiceUnavailable

__all__ = ["RegistryKeyVerifier"]


class RegistryKeyVerifier:
    """Asks the registry's ``POST /v1/apikeys/verify`` who a federated key belongs to."""

    def __init__(
        self,
        registry_url: str,
        credential: str,
        *,
        ttl: float = 10.0,
        negative_ttl: float = 2.0,
        timeout: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=registry_url.rstrip("/"),
            timeout=timeout,
            headers={"Authorization": f"Bearer {credential}"},
            transport=transport,
            trust_env=False,
        )
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        # digest -> (valid until, principal or None, refusal reason, lookup prefix)
        self._cache: dict[str, tuple[float, Principal | None, str, str]] = {}
        self.lookups = 0

    async def verify(self, secret: str) -> Principal | None:
        """The key's principal, or None when the registry refuses it (or it is malformed)."""
        return (await self.check(secret))[0]

    async def check(self, secret: str) -> tuple[Principal | None, str]:
        """The key's principal, or None with the registry's reason (``apikey.revoked``, ``apikey.unknown``...)."""
        try:
            parsed = parse_key(secret)
        except KeyFormatError:
            return None, "apikey.malformed"
        digest = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        self.lookups += 1
        try:
            response = await self._client.post("/v1/apikeys/verify", json={"key": secret})
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                "the registry cannot verify keys right now", code="auth.registry_unavailable"
            ) from exc
        if response.status_code == 200:
            principal = Principal.model_validate(response.json()["principal"])
            self._cache[digest] = (now + self.ttl, principal, "", parsed.lookup_prefix)
            return principal, ""
        if response.status_code == 401:
            try:
                reason = str(response.json().get("error") or "apikey.unknown")
            except ValueError:
                reason = "apikey.unknown"
            self._cache[digest] = (now + self.negative_ttl, None, reason, parsed.lookup_prefix)
            return None, reason
        raise ServiceUnavailable(
            f"the registry answered {response.status_code} to a key verification", code="auth.registry_unavailable"
        )

    def forget_prefix(self, lookup_prefix: str) -> None:
        """Drop the cached answers of the key with this lookup prefix (on its revocation, rotation or expiry)."""
        for digest in [d for d, entry in self._cache.items() if entry[3] == lookup_prefix]:
            self._cache.pop(digest, None)

    def forget_all(self) -> None:
        """Drop every cached answer (on a revocation event)."""
        self._cache.clear()

    async def close(self) -> None:
        await self._client.aclose()
