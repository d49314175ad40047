"""Registry: agreement transitions per second, and revocation → refusal by 10 exchange-side grant watchers.

A real registry process (uvicorn, SQLite) and nats-server. Ten :class:`kit.grants.GrantCache` watchers, each on its
own NATS connection as ten exchanges would be, hold the grants. A revocation is timed from the HTTP request until
every watcher refuses the grant. Baselines from the same run: a raw KV delete seen by ten raw KV watchers, and the
registry's own `/healthz` round trip for the transition rate.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.report import Result, ms, percentile
from bench.services import start_service
from catalog.seeds import SeedTerritory, demo_published
from contracts.envelope import Envelope
from contracts.events import DatasetUpsertedV1
from contracts.grants import GRANTS_BUCKET
from kit.auth import AuthMethod, Principal, Role
from kit.grants import GrantCache
from kit.messaging import Messaging
from kit.nats_server import NatsServer
from kit.process import stop_process
from kit.testing.factories import bootstrap_key, operator_principal

__all__ = ["run"]

DIJON = "242100410"
PARTNER = "73282932000074"
WATCHERS = 10


def _terms() -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "dataset": f"{DIJON}/frequentation-bus",
        "consumer": PARTNER,
        "purpose": {"iri": "https://w3id.org/dpv#ServiceOptimisation", "text": "Optimisation des correspondances"},
        "legal_basis": "A6-1-e",
        "columns": ["stop_id", "line_id", "day", "hour", "boardings"],
        "aggregation": {"mode": "none"},
        "valid_from": now.isoformat(),
        "valid_until": (now + timedelta(days=30)).isoformat(),
    }


async def _connect(url: str, name: str) -> Messaging:
    messaging = Messaging(url, name=name, declare=False)
    await messaging.start()
    await messaging.wait_ready(10)
    return messaging


async def _raw_kv_baseline(url: str, rounds: int) -> list[float]:
    writer = await _connect(url, "bench-kv-writer")
    kv = await writer.js.key_value(GRANTS_BUCKET)
    connections = [await _connect(url, f"bench-raw-watcher-{i}") for i in range(WATCHERS)]
    seen: dict[str, list[float]] = {}
    watchers = []

    async def follow(messaging: Messaging) -> None:
        watcher = await (await messaging.js.key_value(GRANTS_BUCKET)).watch("raw.>")
        watchers.append(watcher)
        async for entry in watcher:
            if entry is not None and entry.operation in ("DEL", "PURGE"):
                seen.setdefault(entry.key, []).append(time.perf_counter())

    tasks = [asyncio.create_task(follow(c)) for c in connections]
    await asyncio.sleep(0.5)
    latencies = []
    for i in range(rounds):
        key = f"raw.{i}"
        await kv.put(key, b"{}")
        await asyncio.sleep(0.002)
        start = time.perf_counter()
        await kv.delete(key)
        while len(seen.get(key, [])) < WATCHERS:
            await asyncio.sleep(0.0002)
        latencies.append(max(seen[key]) - start)
    for task in tasks:
        task.cancel()
    for messaging in [*connections, writer]:
        await messaging.close()
    return latencies


async def _revocations(url: str, registry: str, keys: dict[str, str], rounds: int) -> tuple[list[float], float, float]:
    connections = [await _connect(url, f"bench-exchange-{i}") for i in range(WATCHERS)]
    caches = [GrantCache(m) for m in connections]
    refused: dict[str, dict[int, float]] = {}
    granted: dict[str, set[int]] = {}
    for index, cache in enumerate(caches):

        def on_change(agreement_id: str, grant: object, index: int = index) -> None:
            # One entry per watcher: a watcher reloading its snapshot may report the same change again.
            if grant is None:
                refused.setdefault(agreement_id, {}).setdefault(index, time.perf_counter())
            else:
                granted.setdefault(agreement_id, set()).add(index)

        cache.on_change.append(on_change)
        await cache.start()
        await cache.wait_loaded(10)

    partner = {"Authorization": f"Bearer {keys['partner']}"}
    steward = {"Authorization": f"Bearer {keys['steward']}"}
    latencies = []
    transitions = 0
    transition_time = 0.0
    async with httpx.AsyncClient(base_url=registry, timeout=10) as client:
        for _ in range(rounds):
            started = time.perf_counter()
            created = await client.post("/v1/agreements", json={"terms": _terms()}, headers=partner)
            created.raise_for_status()
            aid = created.json()["id"]
            for action, headers in (("offer", steward), ("accept", partner), ("activate", steward)):
                (await client.post(f"/v1/agreements/{aid}/{action}", headers=headers)).raise_for_status()
            transition_time += time.perf_counter() - started
            transitions += 4
            while len(granted.get(aid, ())) < WATCHERS:
                await asyncio.sleep(0.0005)
            refused.pop(aid, None)
            start = time.perf_counter()
            revoked = await client.post(
                f"/v1/agreements/{aid}/revoke", json={"reason": "banc d'essai"}, headers=steward
            )
            revoked.raise_for_status()
            while len(refused.get(aid, {})) < WATCHERS:
                await asyncio.sleep(0.0002)
            latencies.append(max(refused[aid].values()) - start)
            held = [i for i, cache in enumerate(caches) if cache.get(aid) is not None]
            assert not held, f"watchers {held} still grant {aid}"
        health_start = time.perf_counter()
        for _ in range(rounds * 4):
            (await client.get("/healthz")).raise_for_status()
        health_rate = rounds * 4 / (time.perf_counter() - health_start)
    for cache in caches:
        await cache.stop()
    for messaging in connections:
        await messaging.close()
    return latencies, transitions / transition_time, health_rate


async def _advertise(url: str) -> None:
    messaging = await _connect(url, "bench-catalog")
    territory = SeedTerritory(DIJON, "Dijon Métropole", ("21231",), "dijon")
    for dataset in demo_published(territory, catalog_url="http://c.test", exchange_url="http://e.test"):
        event = DatasetUpsertedV1(dataset=dataset)
        envelope = Envelope(source="bench", type=event.cloud_type(), data=event.to_data())
        await messaging.js.publish(event.subject(), envelope.to_bytes(), headers={"Nats-Msg-Id": envelope.id})
    await messaging.close()


def _start_registry(root: Path, nats_url: str, keyring: Path) -> tuple[Any, str]:
    return start_service("registry", "registry", root, {"NATS_URL": nats_url, "KEYRING_FILE": str(keyring)})


def run(rounds: int = 200) -> Result:
    """Run the benchmark and return its result."""
    with tempfile.TemporaryDirectory(prefix="maillage-bench-registry-") as tmp:
        root = Path(tmp)
        nats = NatsServer(store_dir=root / "jetstream")
        nats.start()
        keyring = root / "keyring.json"
        keys = {
            "operator": bootstrap_key(keyring, operator_principal()),
            "partner": bootstrap_key(
                keyring,
                Principal(subject="bench-partner", organisation=PARTNER, auth_method=AuthMethod.API_KEY),
                kind="prt",
            ),
            "steward": bootstrap_key(
                keyring,
                Principal(
                    subject="bench-steward",
                    territory_roles={DIJON: frozenset({Role.STEWARD})},
                    auth_method=AuthMethod.BOOTSTRAP_KEY,
                ),
                kind="stw",
            ),
        }
        proc, url = _start_registry(root, nats.url, keyring)
        try:
            httpx.post(
                f"{url}/v1/organisations",
                json={"siret": PARTNER, "name": "Mobilab SAS", "contact_email": "contact@mobilab.example"},
                headers={"Authorization": f"Bearer {keys['operator']}"},
            ).raise_for_status()
            asyncio.run(_advertise(nats.url))
            time.sleep(1.0)  # the registry's dataset consumer catches the advertisements
            baseline = asyncio.run(_raw_kv_baseline(nats.url, rounds))
            latencies, transition_rate, health_rate = asyncio.run(_revocations(nats.url, url, keys, rounds))
        finally:
            stop_process(proc)
            nats.stop()
    rows = []
    for label, q in (("p50", 50), ("p99", 99)):
        base, ours = percentile(baseline, q), percentile(latencies, q)
        rows.append(
            [f"revocation → refused by {WATCHERS} watchers, {label}", ms(base), ms(ours), f"{ours / base:.1f}×"]
        )
    rows.append(
        [
            "agreement transitions per second (HTTP, sequential)",
            f"{health_rate:,.0f} /healthz per s",
            f"{transition_rate:,.0f} transitions per s",
            f"{health_rate / transition_rate:.1f}×",
        ]
    )
    return Result(
        name="registry",
        title="Registry: revocation reaching exchanges, and agreement transitions",
        header=["measure", "baseline (same run)", "Maillage", "ratio"],
        rows=rows,
        notes=[
            f"{rounds} agreements requested, offered, accepted, activated, then revoked, one at a time; target "
            "revocation p99 ≤ 100 ms.",
            f"Revocation: from the HTTP request until all {WATCHERS} GrantCache watchers (ten NATS connections, as "
            "ten exchanges) refuse the grant; baseline: a raw KV delete seen by ten raw KV watchers.",
            "Transitions: each one is a conditional update, a terms-hash history line and an outbox row in one "
            "SQLite transaction, over HTTP; baseline: the same process answering /healthz.",
        ],
    )
