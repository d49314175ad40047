"""Demo datasets of a territory: what a real EPCI would describe first.

Four per territory: bike counters (the schema.data.gouv.fr mobility-count schema as is, open), bus ridership by stop
and hour (general interest, restricted), household water consumption per meter and month (personal, protected,
kept five years), and leaks on the drinking-water network (public, open).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from contracts.datasets import (
    AccessLevel,
    ContactPoint,
    DatasetMetadata,
    DataStatus,
    Granularity,
    Hosting,
    PublishedDataset,
    Retention,
    SpatialCoverage,
    TableSchema,
    TemporalCoverage,
)
from contracts.vocabularies import DataTheme, Frequency, LegalBasis

__all__ = [
    "BIKE_COUNT_SCHEMA_URL",
    "REGISTER_SLUG",
    "SeedTerritory",
    "bike_count_schema",
    "demo_datasets",
    "demo_published",
    "register_dataset",
]

LICENCE_OUVERTE = "https://www.etalab.gouv.fr/licence-ouverte-open-licence/"
BIKE_COUNT_SCHEMA_URL = "https://raw.githubusercontent.com/etalab/schema-comptage-mobilites/v0.2.4/measure/schema.json"
_STANDARDS = Path(__file__).resolve().parents[2] / "contracts" / "standards"

# Approximate WGS 84 envelopes of the demo territories (longitude first).
_BBOXES = {
    "242100410": "POLYGON ((4.90 47.23, 5.17 47.23, 5.17 47.40, 4.90 47.40, 4.90 47.23))",
    "242500361": "POLYGON ((5.80 47.13, 6.20 47.13, 6.20 47.40, 5.80 47.40, 5.80 47.13))",
    "200069540": "POLYGON ((5.05 47.35, 5.25 47.35, 5.25 47.50, 5.05 47.50, 5.05 47.35))",
    "200068070": "POLYGON ((5.90 46.95, 6.30 46.95, 6.30 47.15, 5.90 47.15, 5.90 46.95))",
}


@dataclass(frozen=True)
class SeedTerritory:
    siren: str
    name: str
    communes: tuple[str, ...]
    node: str


def bike_count_schema() -> dict[str, Any]:
    """The official measure schema of schema.data.gouv.fr's mobility counts, unchanged."""
    document: dict[str, Any] = json.loads(
        (_STANDARDS / "schema-comptage-mobilites" / "measure" / "schema.json").read_text(encoding="utf-8")
    )
    return document


def _contact(territory: SeedTerritory, service: str) -> ContactPoint:
    return ContactPoint(
        name=f"{service} — {territory.name}", email=f"{service.split()[0].lower()}@{territory.siren}.example.fr"
    )


def _spatial(territory: SeedTerritory) -> SpatialCoverage:
    return SpatialCoverage(communes=list(territory.communes), bbox=_BBOXES.get(territory.siren))


def demo_datasets(territory: SeedTerritory) -> list[tuple[str, DatasetMetadata]]:
    """The four demo datasets of ``territory`` as (slug, metadata)."""
    hosting = Hosting(node=territory.node, country="FR")
    bikes = DatasetMetadata(
        title=f"Comptages vélo — {territory.name}",
        description=(
            f"Mesures journalières des compteurs vélo et piétons de {territory.name}, au format du schéma national "
            "« Comptage des mobilités » (table measure) de schema.data.gouv.fr."
        ),
        theme=[DataTheme.TRAN],
        keywords=["vélo", "comptage", "mobilité", "cyclable"],
        status=DataStatus.PUBLIC,
        access=AccessLevel.OPEN,
        licence=LICENCE_OUVERTE,
        contact_point=_contact(territory, "Mobilités"),
        spatial=_spatial(territory),
        temporal=TemporalCoverage(start=date(2022, 1, 1), end=date(2022, 12, 31)),
        frequency=Frequency.DAILY,
        granularity=Granularity(spatial="canal de comptage", temporal="P1D"),
        conforms_to=BIKE_COUNT_SCHEMA_URL,
        table_schema=TableSchema.from_standard(bike_count_schema()),
        hosting=hosting,
    )
    bus = DatasetMetadata(
        title=f"Fréquentation du réseau de bus par arrêt et par heure — {territory.name}",
        description=(
            "Montées et descentes validées par arrêt, ligne et heure, transmises par le délégataire du service "
            "public de transport. Donnée d'intérêt général, partagée sous convention."
        ),
        theme=[DataTheme.TRAN],
        keywords=["bus", "fréquentation", "transport en commun", "validations"],
        status=DataStatus.GENERAL_INTEREST,
        access=AccessLevel.RESTRICTED,
        contact_point=_contact(territory, "Mobilités"),
        spatial=_spatial(territory),
        temporal=TemporalCoverage(start=date(2023, 1, 1)),
        frequency=Frequency.DAILY,
        granularity=Granularity(spatial="arrêt", temporal="PT1H"),
        table_schema=TableSchema.model_validate(
            {
                "fields": [
                    {"name": "stop_id", "type": "string", "title": "Identifiant GTFS de l'arrêt"},
                    {"name": "stop_name", "type": "string", "title": "Nom de l'arrêt"},
                    {"name": "line_id", "type": "string", "title": "Ligne"},
                    {"name": "day", "type": "date", "title": "Jour"},
                    {"name": "hour", "type": "integer", "constraints": {"minimum": 0, "maximum": 23}},
                    {"name": "boardings", "type": "integer", "title": "Montées", "constraints": {"minimum": 0}},
                    {"name": "alightings", "type": "integer", "title": "Descentes", "constraints": {"minimum": 0}},
                ],
            }
        ),
        hosting=hosting,
    )
    water = DatasetMetadata(
        title=f"Consommation d'eau des ménages par compteur et par mois — {territory.name}",
        description=(
            "Volumes relevés chaque mois sur les compteurs d'eau des abonnés domestiques. Donnée personnelle : "
            "calculs agrégés seulement, sous convention revue par le DPO, conservée cinq ans."
        ),
        theme=[DataTheme.ENVI],
        keywords=["eau", "consommation", "compteur", "ménages"],
        status=DataStatus.PERSONAL,
        access=AccessLevel.PROTECTED,
        legal_basis=LegalBasis.PUBLIC_TASK,
        contact_point=_contact(territory, "Eau et assainissement"),
        spatial=_spatial(territory),
        temporal=TemporalCoverage(start=date(2021, 1, 1)),
        frequency=Frequency.MONTHLY,
        granularity=Granularity(spatial="compteur d'eau", temporal="P1M"),
        table_schema=TableSchema.model_validate(
            {
                "fields": [
                    {
                        "name": "meter_id",
                        "type": "string",
                        "title": "Compteur",
                        "personal": True,
                        "identifier": True,
                        "subject_key": True,
                    },
                    {"name": "commune_insee", "type": "string", "constraints": {"pattern": "^[0-9][0-9AB][0-9]{3}$"}},
                    {"name": "month", "type": "date", "title": "Mois du relevé"},
                    {"name": "volume_m3", "type": "number", "title": "Volume (m³)", "personal": True},
                    {"name": "household_size", "type": "integer", "title": "Personnes au foyer", "personal": True},
                ],
                "primaryKey": ["meter_id", "month"],
            }
        ),
        retention=Retention(period="P5Y", time_column="month"),
        hosting=hosting,
    )
    leaks = DatasetMetadata(
        title=f"Fuites détectées sur le réseau d'eau potable — {territory.name}",
        description="Fuites détectées et réparées sur le réseau public d'eau potable, avec le volume perdu estimé.",
        theme=[DataTheme.ENVI],
        keywords=["eau potable", "fuites", "réseau", "canalisations"],
        status=DataStatus.PUBLIC,
        access=AccessLevel.OPEN,
        licence=LICENCE_OUVERTE,
        contact_point=_contact(territory, "Eau et assainissement"),
        spatial=_spatial(territory),
        temporal=TemporalCoverage(start=date(2020, 1, 1)),
        frequency=Frequency.WEEKLY,
        granularity=Granularity(spatial="fuite"),
        table_schema=TableSchema.model_validate(
            {
                "fields": [
                    {"name": "leak_id", "type": "string", "constraints": {"required": True, "unique": True}},
                    {"name": "commune_insee", "type": "string"},
                    {"name": "detected_on", "type": "date"},
                    {"name": "repaired_on", "type": "date"},
                    {"name": "longitude", "type": "number", "constraints": {"minimum": -180, "maximum": 180}},
                    {"name": "latitude", "type": "number", "constraints": {"minimum": -90, "maximum": 90}},
                    {"name": "volume_lost_m3", "type": "number", "constraints": {"minimum": 0}},
                    {"name": "pipe_material", "type": "string"},
                ],
                "primaryKey": "leak_id",
            }
        ),
        hosting=hosting,
    )
    return [
        ("comptages-velo", bikes),
        ("frequentation-bus", bus),
        ("consommation-eau-menages", water),
        ("fuites-reseau-eau", leaks),
    ]


def demo_published(territory: SeedTerritory, *, catalog_url: str, exchange_url: str) -> list[PublishedDataset]:
    """The demo datasets of ``territory`` as published revision 1 (for tests, benchmarks and exports)."""
    now = datetime.now(UTC)
    return [
        PublishedDataset.model_validate(
            {
                "id": f"{territory.siren}/{slug}",
                "territory": territory.siren,
                "slug": slug,
                "uri": f"{catalog_url.rstrip('/')}/datasets/{territory.siren}/{slug}",
                "publisher_name": territory.name,
                "node": territory.node,
                "catalog_url": catalog_url,
                "exchange_url": exchange_url,
                "revision": 1,
                "created": now,
                "modified": now,
                "published": now,
                "metadata": metadata,
            }
        )
        for slug, metadata in demo_datasets(territory)
    ]


REGISTER_SLUG = "registre-des-conventions"


def register_dataset(territory: SeedTerritory, registry_url: str) -> DatasetMetadata:
    """The territory's part of the public register of agreements, as an open dataset served by the registry."""
    text_fields = [
        ("agreement_id", "Identifiant de la convention"),
        ("provider_siren", "SIREN du territoire fournisseur"),
        ("provider_name", "Territoire fournisseur"),
        ("consumer_id", "SIREN ou SIRET du bénéficiaire"),
        ("consumer_name", "Bénéficiaire"),
        ("dataset", "Jeu de données"),
        ("purpose_iri", "Finalité (W3C DPV)"),
        ("purpose_label", "Finalité"),
        ("purpose_text", "Finalité détaillée"),
        ("legal_basis", "Base légale (RGPD art. 6)"),
    ]
    fields: list[dict[str, Any]] = [{"name": name, "type": "string", "title": title} for name, title in text_fields]
    fields += [
        {"name": "valid_from", "type": "datetime", "title": "Début de validité"},
        {"name": "valid_until", "type": "datetime", "title": "Fin de validité"},
        {
            "name": "state",
            "type": "string",
            "title": "État",
            "constraints": {"enum": ["ACTIVE", "SUSPENDED", "REVOKED", "TERMINATED", "EXPIRED"]},
        },
        {"name": "in_force_since", "type": "datetime", "title": "En vigueur depuis"},
        {"name": "ended_at", "type": "datetime", "title": "Fin"},
    ]
    return DatasetMetadata(
        title=f"Registre des conventions de partage de données — {territory.name}",
        description=(
            f"Toutes les conventions par lesquelles {territory.name} a permis à un tiers de calculer sur ses données, "
            "en cours ou passées : bénéficiaire, jeu de données, finalité, base légale, période et état. Tenu à jour "
            "par le registre de la fédération Maillage."
        ),
        theme=[DataTheme.GOVE],
        keywords=["transparence", "conventions", "partage de données", "registre"],
        status=DataStatus.PUBLIC,
        access=AccessLevel.OPEN,
        licence=LICENCE_OUVERTE,
        contact_point=_contact(territory, "Délégué à la protection des données"),
        spatial=_spatial(territory),
        frequency=Frequency.CONT,
        table_schema=TableSchema.model_validate({"fields": fields, "primaryKey": "agreement_id"}),
        hosting=Hosting(node=territory.node, country="FR"),
        external_csv_url=f"{registry_url.rstrip('/')}/v1/register.csv?provider={territory.siren}",
    )
