"""Data for the demo's datasets: the real Eco-Compteur measures for bike counters, and generated water readings."""

from __future__ import annotations

import csv
import io
import random
import time
from pathlib import Path

import httpx

from maillage.bootstrap import BootstrapKey
from maillage.federation import Federation

__all__ = ["ingest_demo_data", "water_readings"]

MEASURES = (
    Path(__file__).resolve().parents[2]
    / "contracts"
    / "standards"
    / "schema-comptage-mobilites"
    / "measure"
    / "exemple-valide-eco-compteur.csv"
)


def water_readings(siren: str, communes: list[str], meters: int = 400, months: int = 24) -> bytes:
    """Monthly readings of ``meters`` household meters spread over the territory's communes (deterministic)."""
    rng = random.Random(int(siren))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["meter_id", "commune_insee", "month", "volume_m3", "household_size"])
    # Most meters in the first communes, a handful in the last ones: small groups the k rule must suppress.
    weights = [1.0 / (index + 1) ** 1.5 for index in range(len(communes))]
    for meter in range(meters):
        commune = rng.choices(communes, weights)[0]
        size = rng.randint(1, 6)
        for month in range(months):
            year, month_of_year = 2023 + month // 12, month % 12 + 1
            volume = max(0.5, rng.gauss(3.2 * size, 1.5))
            writer.writerow(
                [f"CPT-{siren[-4:]}-{meter:05d}", commune, f"{year}-{month_of_year:02d}-01", round(volume, 2), size]
            )
    return out.getvalue().encode("utf-8")


def _upload(client: httpx.Client, url: str, body: bytes, headers: dict[str, str], timeout: float) -> str | None:
    # The exchange learns the dataset's schema from the catalog's advertisement: retry while it answers 404.
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return str(exc)
        if response.status_code == 201:
            return None
        if response.status_code != 404 or time.monotonic() > deadline:
            return f"{response.status_code} {response.text[:160]}"
        time.sleep(0.5)


def ingest_demo_data(federation: Federation, keys: list[BootstrapKey], *, timeout: float = 60.0) -> list[str]:
    """Upload the demo data of every territory whose exchange holds none yet; returns problems (empty when fine)."""
    problems: list[str] = []
    stewards = {key.territory: key.secret for key in keys if key.role == "steward"}
    measures = MEASURES.read_bytes()
    with httpx.Client(timeout=60, trust_env=False) as client:
        for node in federation.nodes:
            for siren in node.territories:
                secret = stewards.get(siren)
                if secret is None:
                    continue
                headers = {"Authorization": f"Bearer {secret}", "Content-Type": "text/csv"}
                base = f"{node.urls.exchange}/v1/territories/{siren}"
                try:
                    listing = client.get(f"{base}/datasets")
                    listing.raise_for_status()
                    held = {d["slug"] for d in listing.json()}
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    problems.append(f"{siren}: the exchange at {node.urls.exchange} did not list its data ({exc})")
                    continue
                communes = [c.insee for c in federation.territory(siren).communes] or ["21231"]
                uploads = {
                    "comptages-velo": measures,
                    "consommation-eau-menages": water_readings(siren, communes),
                }
                for slug, body in uploads.items():
                    if slug in held:
                        continue
                    problem = _upload(client, f"{base}/datasets/{slug}/data?mode=replace", body, headers, timeout)
                    if problem is not None:
                        problems.append(f"{siren}/{slug}: {problem}")
    return problems
