"""The federation directory as the gateway needs it: which node serves which territory (catalog, exchange, consent
URLs) and the admitted partner organisations, read from the registry and cached a few seconds."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from kit.errors import NotFound, ServiceUnavailable

__all__ = ["Directory", "NodeEntry"]


@dataclass(frozen=True)
class NodeEntry:
    id: str
    territories: tuple[str, ...]
    urls: dict[str, str]


class Directory:
    """``GET /v1/nodes`` and ``GET /v1/organisations`` of the registry, refreshed at most every ``ttl`` seconds."""

    def __init__(self, client: httpx.AsyncClient, *, ttl: float = 10.0) -> None:
        self._client = client
        self.ttl = ttl
        self._nodes: list[NodeEntry] = []
        self._organisations: list[str] = []
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def _refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self._fetched_at is not None and now - self._fetched_at < self.ttl:
            return
        async with self._lock:
            if not force and self._fetched_at is not None and time.monotonic() - self._fetched_at < self.ttl:
                return
            try:
                nodes = await self._client.get("/v1/nodes")
                organisations = await self._client.get("/v1/organisations")
                nodes.raise_for_status()
                organisations.raise_for_status()
            except httpx.HTTPError as exc:
                if self._fetched_at is None:
                    raise ServiceUnavailable(
                        "the registry's directory is unreachable", code="gateway.directory_unavailable"
                    ) from exc
                return  # keep serving the last directory we had
            self._nodes = [
                NodeEntry(id=n["id"], territories=tuple(n["territories"]), urls=dict(n["urls"])) for n in nodes.json()
            ]
            self._organisations = [o["siret"] for o in organisations.json()]
            self._fetched_at = time.monotonic()

    async def nodes(self) -> list[NodeEntry]:
        await self._refresh()
        return list(self._nodes)

    async def territories(self) -> list[str]:
        """Every territory hosted by a node of the federation."""
        return sorted({siren for node in await self.nodes() for siren in node.territories})

    async def url(self, siren: str, service: str) -> str:
        """Base URL of ``service`` (catalog, exchange, consent) on the node hosting ``siren``; 404 otherwise."""
        for node in await self.nodes():
            if siren in node.territories and service in node.urls:
                return node.urls[service].rstrip("/")
        raise NotFound(f"no node of the federation hosts territory {siren}", code="territory.not_hosted")

    async def any_url(self, service: str) -> str:
        """Base URL of ``service`` on some node (the federated catalogue is the same on every catalog)."""
        for node in sorted(await self.nodes(), key=lambda n: n.id):
            if service in node.urls:
                return node.urls[service].rstrip("/")
        raise ServiceUnavailable(f"no node of the federation runs a {service}", code="gateway.no_node")

    async def organisation_for(self, siren: str) -> str | None:
        """The admitted organisation (SIRET) of a partner known to Keycloak by its SIREN, when exactly one matches."""
        await self._refresh()
        matches = [siret for siret in self._organisations if siret.startswith(siren)]
        return matches[0] if len(matches) == 1 else None
