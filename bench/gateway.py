"""Gateway: its overhead over a direct call to the service, the federated query over 1, 3 and 10 nodes, and how fast
a revoked API key is refused.

Real processes: nats-server, Keycloak (realm ``maillage``, :class:`kit.testing.keycloak.KeycloakServer`), the
registry, the gateway (principal assertions on, Keycloak tokens verified locally, federated keys verified by the
registry and cached, rate limits raised out of the way) and one exchange process per territory for ten real EPCIs of
Bourgogne-Franche-Comté (``../shared/data/referentiel``), each holding the real Eco-Compteur bike counts (open data).

- Overhead: the same request sent straight to Dijon's exchange and through the gateway (``/t/<siren>/exchange/...``),
  interleaved, with a federated API key and with a Keycloak access token (client credentials): a light route
  (the list of datasets held, which the exchange answers without auth) and an open-data query. Requests per second
  with 16 concurrent requests, same route, same client.
- Federated query: ``POST /v1/query`` over 1, 3 and 10 territories against the slowest of the same territories asked
  one by one directly (HTTP to each exchange) in the same round.
- Revocation: from the registry's revoke call until the gateway refuses the key (polled on ``/v1/whoami``), with a
  key cache of 60 s, so only the revocation event over NATS can make it refuse; baseline: the revoke call itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench.report import Result, ms, percentile
from catalog.seeds import SeedTerritory, demo_published
from contracts.envelope import Envelope
from contracts.events import DatasetUpsertedV1
from kit.auth import AuthMethod, Principal, Role
from kit.auth.assertions import generate_signing_key, public_key_of
from kit.messaging import Messaging
from kit.nats_server import NatsServer
from kit.process import free_port, spawn, stop_process
from kit.testing.factories import bootstrap_key, operator_principal
from kit.testing.keycloak import PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET, KeycloakServer
from maillage.demo_data import MEASURES
from maillage.federation import default_referentiel_path

__all__ = ["run"]

PARTNER = "73282932000074"  # Mobilab SAS: organisation 732829320 in the realm, client mobilab-partner
DATASET = "comptages-velo"
SQL = f'SELECT channel_id, sum(count) AS passages FROM "{DATASET}" GROUP BY 1'
NODES = 10
CONCURRENCY = 16

Call = Callable[[], Awaitable[httpx.Response]]


def _territories(count: int) -> list[dict[str, Any]]:
    """The ``count`` most populous EPCIs of the referentiel (Dijon and Besançon first)."""
    epcis = json.loads(default_referentiel_path().read_text(encoding="utf-8"))
    ranked = sorted(epcis, key=lambda e: -int(e["populationTotale"]))[:count]
    return [
        {
            "siren": e["siren"],
            "name": e["nom"],
            "type": e["type"],
            "population": int(e["populationTotale"]),
            "communes": [{"insee": c["insee"], "name": c["nom"]} for c in e["communes"]],
        }
        for e in ranked
    ]


class _Processes:
    """Service processes started together and awaited together (10 exchanges start in parallel)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, service: str, name: str, settings: dict[str, str]) -> str:
        port = free_port()
        prefix = f"MAILLAGE_{service.upper()}_"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.update(
            {
                prefix + key: value
                for key, value in {
                    "PORT": str(port),
                    "DATA_DIR": str(self.root / name),
                    "LOG_LEVEL": "warning",
                    "NODE_ID": name,
                    **settings,
                }.items()
            }
        )
        with open(self.root / f"{name}.log", "wb") as log:
            self.procs.append(spawn([sys.executable, "-m", service], env=env, stdout=log))
        return f"http://127.0.0.1:{port}"

    def wait_ready(self, urls: list[str], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(urls)
        with httpx.Client(timeout=1, trust_env=False) as client:
            while pending:
                for url in list(pending):
                    try:
                        if client.get(f"{url}/readyz").status_code == 200:
                            pending.remove(url)
                    except httpx.HTTPError:
                        pass
                dead = [p for p in self.procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"services not ready: {pending}; logs in {self.root}")
                time.sleep(0.2)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)


async def _advertise(nats_url: str, territories: list[dict[str, Any]]) -> None:
    messaging = Messaging(nats_url, name="bench-catalog", declare=False)
    await messaging.start()
    await messaging.wait_ready(10)
    for t in territories:
        communes = tuple(c["insee"] for c in t["communes"][:3])
        seed = SeedTerritory(t["siren"], t["name"], communes, f"node-{t['siren']}")
        for dataset in demo_published(seed, catalog_url="http://c.test", exchange_url="http://e.test"):
            event = DatasetUpsertedV1(dataset=dataset)
            envelope = Envelope(source="bench", type=event.cloud_type(), data=event.to_data())
            await messaging.js.publish(event.subject(), envelope.to_bytes(), headers={"Nats-Msg-Id": envelope.id})
    await messaging.close()


def _upload(exchange: str, siren: str, steward: str) -> None:
    url = f"{exchange}/v1/territories/{siren}/datasets/{DATASET}/data?mode=replace"
    headers = {"Authorization": f"Bearer {steward}", "Content-Type": "text/csv"}
    body = MEASURES.read_bytes()
    deadline = time.monotonic() + 60
    while True:  # the exchange learns the schema from the advertisement: 404 until then
        response = httpx.post(url, content=body, headers=headers, timeout=60, trust_env=False)
        if response.status_code == 201:
            return
        if response.status_code != 404 or time.monotonic() > deadline:
            raise RuntimeError(f"upload to {siren}: {response.status_code} {response.text[:200]}")
        time.sleep(0.5)


async def _timed(call: Call, expect: int = 200) -> float:
    started = time.perf_counter()
    response = await call()
    elapsed = time.perf_counter() - started
    if response.status_code != expect:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return elapsed


async def _paired(direct: Call, gateway: Call, rounds: int) -> tuple[list[float], list[float]]:
    """Latencies of ``direct`` and ``gateway``, interleaved so that drift hits both alike (after a warm-up)."""
    for _ in range(20):
        await _timed(direct)
        await _timed(gateway)
    ds, gs = [], []
    for _ in range(rounds):
        ds.append(await _timed(direct))
        gs.append(await _timed(gateway))
    return ds, gs


async def _throughput(call: Call, seconds: float = 3.0) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await _timed(call)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - started)


async def _measure(
    *,
    gateway: str,
    registry: str,
    exchanges: dict[str, str],
    sirens: list[str],
    keycloak: KeycloakServer,
    operator: str,
    rounds: int,
) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    admin = {"Authorization": f"Bearer {operator}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=60, trust_env=False, limits=limits) as client:
        issued = await client.post(
            f"{registry}/v1/organisations/{PARTNER}/apikeys", json={"name": "bench", "scopes": ["query"]}, headers=admin
        )
        issued.raise_for_status()
        credentials = {
            "API key": lambda: issued.json()["secret"],
            "Keycloak JWT": lambda: keycloak.client_token(PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET),
        }

        def get(url: str, headers: dict[str, str]) -> Call:
            return lambda: client.get(url, headers=headers)

        def post(url: str, headers: dict[str, str]) -> Call:
            return lambda: client.post(url, json={"sql": SQL}, headers=headers)

        siren = sirens[0]
        listing, query = f"/v1/territories/{siren}/datasets", f"/v1/territories/{siren}/query"
        direct, via = exchanges[siren], f"{gateway}/t/{siren}/exchange"
        for label, credential in credentials.items():
            headers = {"Authorization": f"Bearer {credential()}"}  # a fresh token per series (5 min lifespan)
            out[("light", label)] = await _paired(get(direct + listing, headers), get(via + listing, headers), rounds)
            out[("light-rps", label)] = (
                await _throughput(get(direct + listing, headers)),
                await _throughput(get(via + listing, headers)),
            )
            out[("query", label)] = await _paired(
                post(direct + query, headers), post(via + query, headers), rounds // 2
            )

        # Federated query over 1, 3, 10 territories vs the slowest of them asked directly in the same round.
        headers = {"Authorization": f"Bearer {issued.json()['secret']}"}
        for count in (1, 3, NODES):
            targets = sirens[:count]
            baseline, summed, federated = [], [], []
            for index in range(5 + max(40, rounds // (2 * count))):
                singles = [await _timed(post(f"{exchanges[s]}/v1/territories/{s}/query", headers)) for s in targets]
                started = time.perf_counter()
                answer = await client.post(
                    f"{gateway}/v1/query", json={"sql": SQL, "territories": targets}, headers=headers
                )
                elapsed = time.perf_counter() - started
                body = answer.json()
                statuses = {t["status"] for t in body.get("territories", {}).values()}
                if answer.status_code != 200 or statuses != {"ok"}:
                    raise RuntimeError(f"federated query over {count}: {answer.status_code} {answer.text[:300]}")
                if index >= 5:  # warm-up
                    baseline.append(max(singles))
                    summed.append(sum(singles))
                    federated.append(elapsed)
            out[("federated", count)] = (baseline, summed, federated)

        # Revocation → refused at the gateway.
        revoke_calls, refusals = [], []
        for _ in range(max(30, rounds // 10)):
            key = await client.post(
                f"{registry}/v1/organisations/{PARTNER}/apikeys",
                json={"name": "revoked", "scopes": ["query"]},
                headers=admin,
            )
            key.raise_for_status()
            key_headers = {"Authorization": f"Bearer {key.json()['secret']}"}
            whoami = get(f"{gateway}/v1/whoami", key_headers)
            await _timed(whoami)  # cached at the gateway from now on
            started = time.perf_counter()
            revoke = f"{registry}/v1/organisations/{PARTNER}/apikeys/{key.json()['id']}/revoke"
            (await client.post(revoke, json={"reason": "banc d'essai"}, headers=admin)).raise_for_status()
            revoke_calls.append(time.perf_counter() - started)
            while (await whoami()).status_code != 401:
                if time.perf_counter() - started > 60:
                    raise RuntimeError("the revoked key was not refused within 60 s")
            refusals.append(time.perf_counter() - started)
        out["revocation"] = (revoke_calls, refusals)
    return out


def run(rounds: int = 400) -> Result:
    """Run the benchmark and return its result."""
    territories = _territories(NODES)
    sirens = [t["siren"] for t in territories]
    with tempfile.TemporaryDirectory(prefix="maillage-bench-gateway-") as tmp:
        root = Path(tmp)
        keyring = root / "keyring.json"
        operator = bootstrap_key(keyring, operator_principal())
        verifier = bootstrap_key(
            keyring,
            Principal(subject="gateway", scopes=frozenset({"apikeys:verify"}), auth_method=AuthMethod.BOOTSTRAP_KEY),
            kind="svc",
        )
        stewards = {
            siren: bootstrap_key(
                keyring,
                Principal(
                    subject=f"steward-{siren}",
                    territory_roles={siren: frozenset({Role.STEWARD})},
                    auth_method=AuthMethod.BOOTSTRAP_KEY,
                ),
                kind="stw",
            )
            for siren in sirens
        }
        signing_key = generate_signing_key()
        nats = NatsServer(store_dir=root / "jetstream")
        nats.start()
        keycloak = KeycloakServer(base_dir=root)
        processes = _Processes(root)
        try:
            keycloak.start()
            common = {"NATS_URL": nats.url, "KEYRING_FILE": str(keyring)}
            registry_port = free_port()
            registry = f"http://127.0.0.1:{registry_port}"
            exchanges = {
                siren: processes.spawn(
                    "exchange",
                    f"exchange-{siren}",
                    {
                        **common,
                        "TERRITORIES": siren,
                        "REGISTRY_URL": registry,
                        "SANDBOX_WORKERS": "1",
                        "ASSERTION_PUBLIC_KEYS": public_key_of(signing_key),
                        "OIDC_ISSUER": keycloak.issuer,
                        "REGISTRY_KEY": verifier,
                    },
                )
                for siren in sirens
            }
            federation = root / "federation.json"
            federation.write_text(
                json.dumps(
                    {
                        "version": 1,
                        "territories": territories,
                        "nodes": [
                            {
                                "id": f"node-{t['siren']}",
                                "name": t["name"],
                                "territories": [t["siren"]],
                                "urls": {"exchange": exchanges[t["siren"]]},
                            }
                            for t in territories
                        ],
                    }
                ),
                encoding="utf-8",
            )
            processes.spawn(
                "registry", "registry", {**common, "PORT": str(registry_port), "FEDERATION_FILE": str(federation)}
            )
            processes.wait_ready([registry, *exchanges.values()])
            many = "1000000"
            gateway = processes.spawn(
                "gateway",
                "gateway",
                {
                    **common,
                    "REGISTRY_URL": registry,
                    "REGISTRY_KEY": verifier,
                    "OIDC_ISSUER": keycloak.issuer,
                    "ASSERTION_SIGNING_KEY": signing_key,
                    "APIKEY_CACHE_SECONDS": "60",
                    "QUERY_NODE_TIMEOUT_SECONDS": "30",
                    "RATE_LIMIT_PER_KEY": many,
                    "RATE_LIMIT_PER_KEY_BURST": many,
                    "RATE_LIMIT_PER_ORGANISATION": many,
                    "RATE_LIMIT_PER_ORGANISATION_BURST": many,
                },
            )
            processes.wait_ready([gateway])
            httpx.post(
                f"{registry}/v1/organisations",
                json={"siret": PARTNER, "name": "Mobilab SAS", "contact_email": "contact@mobilab.example"},
                headers={"Authorization": f"Bearer {operator}"},
                trust_env=False,
            ).raise_for_status()
            asyncio.run(_advertise(nats.url, territories))
            for siren in sirens:
                _upload(exchanges[siren], siren, stewards[siren])
            version = keycloak.version
            results = asyncio.run(
                _measure(
                    gateway=gateway,
                    registry=registry,
                    exchanges=exchanges,
                    sirens=sirens,
                    keycloak=keycloak,
                    operator=operator,
                    rounds=rounds,
                )
            )
        finally:
            processes.stop()
            keycloak.stop()
            nats.stop()
    return _result(results, territories, rounds, version)


def _ratio(base: float, ours: float) -> str:
    return f"{ours / base:.2f}×"


def _result(results: dict[Any, Any], territories: list[dict[str, Any]], rounds: int, version: str) -> Result:
    rows: list[list[str]] = []
    for label in ("API key", "Keycloak JWT"):
        for kind, what in (("light", "list of datasets held"), ("query", "open-data query")):
            direct, via = results[(kind, label)]
            for q in (50, 99):
                base, ours = percentile(direct, q), percentile(via, q)
                rows.append([f"{what}, {label}, p{q}", f"direct {ms(base)}", f"gateway {ms(ours)}", _ratio(base, ours)])
        direct_rps, via_rps = results[("light-rps", label)]
        rows.append(
            [
                f"list of datasets held, {label}, requests/s ({CONCURRENCY} concurrent)",
                f"direct {direct_rps:,.0f}/s",
                f"gateway {via_rps:,.0f}/s",
                f"{via_rps / direct_rps:.2f}×",
            ]
        )
    for count in (1, 3, NODES):
        slowest, summed, federated = results[("federated", count)]
        territories_label = f"{count} territor{'y' if count == 1 else 'ies'}"
        for q in (50, 99):
            base, ours = percentile(slowest, q), percentile(federated, q)
            rows.append(
                [
                    f"federated query, {territories_label}, p{q}",
                    f"slowest single node {ms(base)}",
                    f"gateway {ms(ours)}",
                    _ratio(base, ours),
                ]
            )
        if count > 1:
            base, ours = percentile(summed, 50), percentile(federated, 50)
            rows.append(
                [
                    f"federated query, {territories_label}, p50, against the nodes one after the other",
                    f"sum of single nodes {ms(base)}",
                    f"gateway {ms(ours)}",
                    _ratio(base, ours),
                ]
            )
    revoke_calls, refusals = results["revocation"]
    for q in (50, 99):
        base, ours = percentile(revoke_calls, q), percentile(refusals, q)
        rows.append(
            [
                f"revocation → refused at the gateway, p{q}",
                f"revoke call {ms(base)}",
                f"refused {ms(ours)}",
                _ratio(base, ours),
            ]
        )
    names = ", ".join(f"{t['name']} ({t['siren']})" for t in territories)
    return Result(
        name="gateway",
        title="Gateway: overhead, federated query, revocation",
        header=["measure", "baseline (same run)", "Maillage", "ratio"],
        rows=rows,
        notes=[
            f"Real processes: nats-server, Keycloak {version}, registry, gateway, {NODES} exchanges (one per "
            f"territory, one sandbox worker each) on this 2-core machine, client included. Territories: {names}.",
            f"Overhead: {rounds} (light route) and {rounds // 2} (query) sequential requests each way, interleaved, "
            "after a warm-up; the gateway authenticates (federated key "
            "checked by the registry then cached; Keycloak token verified locally with the cached JWKS), signs an "
            "EdDSA principal assertion and forwards; the exchange verifies the assertion (direct: the key or token). "
            "The light route needs no credential at the exchange; the query is "
            f"`{SQL}` on the real Eco-Compteur counts (open data, no agreement).",
            "Federated query: the same SQL over NATS to each territory at once, merged by the gateway; the baseline "
            "is the slowest of the same territories asked one after the other over HTTP in the same round (and, as "
            f"context, their sum); {max(40, rounds // 2)}, {max(40, rounds // 6)} and {max(40, rounds // 20)} rounds "
            "for 1, 3 and 10 territories. On 2 cores the nodes' query workers cannot all compute at once, so the "
            "fan-out tracks the sum of the nodes' times (rows against the sum) more than the slowest node's; nodes "
            "on separate machines would compute in parallel (not measured here).",
            "Revocation: the gateway caches keys for 60 s, so only the `registry.apikey.revoked` event can make it "
            f"refuse; {max(30, rounds // 10)} keys, each measured from the start of the revoke call until "
            "`/v1/whoami` answers 401 (polled back to back). DESIGN.md §3 aims at about a second.",
        ],
    )
