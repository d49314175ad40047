"""Data for the demo's datasets: the real Eco-Compteur measures for bike counters, generated water readings, and the
consents of one household in three to research on their readings (naming the demo partner)."""

from __future__ import annotations

import csv
import io
import random
import time
from pathlib import Path

import httpx

from maillage.bootstrap import BootstrapKey
from maillage.federation import Federation
from maillage.partner import DEMO_PARTNER_SIRET

__all__ = ["DEMO_METERS", "consenting_meters", "ingest_demo_data", "water_readings"]

DEMO_METERS = 400
RESEARCH = "https://w3id.org/dpv#ScientificResearch"

MEASURES = (
    Path(__file__).resolve().parents[2]
    / "contracts"
    / "standards"
    / "schema-comptage-mobilites"
    / "measure"
    / "exemple-valide-eco-compteur.csv"
)


def meter_id(siren: str, meter: int) -> str:
    return f"CPT-{siren[-4:]}-{meter:05d}"


def consenting_meters(siren: str) -> list[str]:
    """The demo's households that consent to research on their readings: one meter in three."""
    return [meter_id(siren, meter) for meter in range(0, DEMO_METERS, 3)]


def water_readings(siren: str, communes: list[str], meters: int = DEMO_METERS, months: int = 24) -> bytes:
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
            writer.writerow([meter_id(siren, meter), commune, f"{year}-{month_of_year:02d}-01", round(volume, 2), size])
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
                problem = _seed_consents(client, node.urls.consent, siren, {"Authorization": f"Bearer {secret}"})
                if problem is not None:
                    problems.append(f"{siren} consents: {problem}")
    return problems


def _seed_consents(client: httpx.Client, consent_url: str, siren: str, headers: dict[str, str]) -> str | None:
    """A research notice and the consents of one household in three, naming the demo partner (once)."""
    base = f"{consent_url}/v1/territories/{siren}/consent"
    try:
        listing = client.get(f"{base}/notices", headers=headers)
        listing.raise_for_status()
        if listing.json():
            return None  # seeded by an earlier start
        notice = {
            "notice_id": "releves-eau-recherche",
            "version": 1,
            "language": "fr",
            "title": "Partager vos relevés d'eau avec la recherche",
            "text": "Votre collectivité propose de partager vos relevés mensuels de consommation d'eau, sous forme "
            "agrégée uniquement, avec des équipes de recherche nommées. Vous pouvez retirer votre accord à tout "
            "moment, aussi simplement que vous l'avez donné.",
            "purposes": [RESEARCH],
        }
        client.post(f"{base}/notices", json=notice, headers=headers).raise_for_status()
        for meter in consenting_meters(siren):
            decision = {
                "subject_identifier": meter,
                "purpose": RESEARCH,
                "notice": {"id": "releves-eau-recherche", "version": 1, "language": "fr"},
                "processing": {
                    "data_categories": ["consommation d'eau mensuelle", "taille du foyer"],
                    "controllers": [siren],
                    "recipients": [DEMO_PARTNER_SIRET],
                    "retention": "P2Y",
                    "storage_location": "FR",
                    "jurisdiction": "FR",
                    "withdrawal_method": "espace citoyen de la collectivité, ou au guichet",
                },
            }
            client.post(f"{base}/records", json=decision, headers=headers).raise_for_status()
    except (httpx.HTTPError, ValueError) as exc:
        return str(exc)[:200]
    return None
