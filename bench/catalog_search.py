"""Federated catalogue search: Maillage's in-memory index against SQLite FTS5, on 10,000 datasets of 100 EPCIs.

The datasets are synthetic but shaped like what EPCIs publish: the four demo datasets of ``catalog.seeds`` as
templates plus some thirty kinds (mobility, water, waste, energy, urbanism, environment, education, budget, ...),
each in a few variants (year, commune, period), with statuses, accesses and licences drawn per territory. The same
documents go into an FTS5 table (``unicode61 remove_diacritics 2``, bm25 with the same field weights) and the same
~500 queries run against both: single words, two words with accents and plurals, facet filters, filters without
words, pages further down.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from bench.report import Result, ms, percentile
from catalog.search import (
    FACETS,
    FIELDS,
    STEMMER_IMPLEMENTATION,
    THEME_LABELS,
    SearchIndex,
    SearchQuery,
    analyze,
    field_texts,
    split_words,
)
from catalog.seeds import SeedTerritory, demo_datasets
from contracts.datasets import DatasetMetadata, PublishedDataset, distribution_formats
from contracts.vocabularies import LICENCES, DataTheme

__all__ = ["build_datasets", "build_queries", "run"]

REFERENTIEL = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "referentiel" / "epci-bourgogne-franche-comte.json"
)
TERRITORIES = 100
PER_TERRITORY = 100
SEED = 20_240_917

# --------------------------------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class Kind:
    slug: str
    title: str
    description: str
    keywords: tuple[str, ...]
    themes: tuple[DataTheme, ...]
    statuses: tuple[tuple[str, str], ...]  # (status, access) pairs a territory may choose
    fields: tuple[tuple[str, str, str], ...]  # (name, type, title)
    granularity: str
    frequency: str


_OPEN = (("public", "open"),)
_SHARED = (("general-interest", "restricted"), ("general-interest", "open"), ("public", "open"))
_PRIVATE = (("private-territorial-interest", "restricted"), ("private-territorial-interest", "protected"))

KINDS = (
    Kind(
        "stationnement-payant",
        "Occupation du stationnement payant par zone",
        "Taux d'occupation horaire des places de stationnement payant sur voirie, par zone tarifaire, issus des "
        "horodateurs et des capteurs.",
        ("stationnement", "parking", "horodateurs", "voirie"),
        (DataTheme.TRAN,),
        _SHARED,
        (("zone_id", "string", "Zone tarifaire"), ("hour", "datetime", "Heure"), ("occupancy", "number", "Taux")),
        "zone tarifaire",
        "HOURLY",
    ),
    Kind(
        "bornes-recharge-irve",
        "Bornes de recharge pour véhicules électriques (IRVE)",
        "Localisation et caractéristiques des points de recharge pour véhicules électriques ouverts au public, au "
        "format du schéma national IRVE.",
        ("IRVE", "recharge", "véhicules électriques", "bornes", "électromobilité"),
        (DataTheme.TRAN, DataTheme.ENER),
        _OPEN,
        (("id_pdc_itinerance", "string", "Point de charge"), ("puissance_nominale", "number", "Puissance (kW)")),
        "point de charge",
        "MONTHLY",
    ),
    Kind(
        "amenagements-cyclables",
        "Aménagements cyclables",
        "Pistes, bandes et voies vertes du territoire, avec leur type, leur revêtement et leur sens de circulation.",
        ("vélo", "pistes cyclables", "voies vertes", "mobilité douce"),
        (DataTheme.TRAN,),
        _OPEN,
        (("troncon_id", "string", "Tronçon"), ("type_amenagement", "string", "Type"), ("longueur_m", "number", "")),
        "tronçon",
        "ANNUAL",
    ),
    Kind(
        "trafic-routier",
        "Trafic routier : comptages automatiques des véhicules",
        "Débits journaliers moyens des véhicules légers et poids lourds mesurés par les boucles de comptage.",
        ("trafic", "comptage routier", "poids lourds", "circulation"),
        (DataTheme.TRAN,),
        _SHARED,
        (("station_id", "string", "Station"), ("day", "date", "Jour"), ("vehicles", "integer", "Véhicules")),
        "station de comptage",
        "DAILY",
    ),
    Kind(
        "horaires-gtfs",
        "Horaires théoriques du réseau de transport en commun (GTFS)",
        "Arrêts, lignes et horaires théoriques du réseau urbain au format GTFS, mis à jour à chaque changement "
        "de service.",
        ("GTFS", "horaires", "arrêts", "transport en commun", "lignes"),
        (DataTheme.TRAN,),
        _OPEN,
        (("stop_id", "string", "Arrêt"), ("route_id", "string", "Ligne"), ("departure_time", "time", "Départ")),
        "arrêt",
        "WEEKLY",
    ),
    Kind(
        "aires-covoiturage",
        "Aires de covoiturage",
        "Lieux de covoiturage aménagés : nombre de places, bornes, accès aux transports en commun.",
        ("covoiturage", "aires", "parking relais", "mobilité"),
        (DataTheme.TRAN,),
        _OPEN,
        (("id_lieu", "string", "Lieu"), ("nbre_pl", "integer", "Places"), ("insee", "string", "Commune")),
        "aire",
        "ANNUAL",
    ),
    Kind(
        "qualite-eau-potable",
        "Qualité de l'eau potable distribuée",
        "Résultats des prélèvements sanitaires sur le réseau de distribution : nitrates, pesticides, bactériologie, "
        "conformité aux limites de qualité.",
        ("qualité de l'eau", "nitrates", "pesticides", "contrôle sanitaire"),
        (DataTheme.ENVI, DataTheme.HEAL),
        _OPEN,
        (("prelevement_id", "string", "Prélèvement"), ("parametre", "string", "Paramètre"), ("valeur", "number", "")),
        "point de prélèvement",
        "MONTHLY",
    ),
    Kind(
        "stations-epuration",
        "Stations d'épuration : volumes traités et rendements",
        "Volumes d'eaux usées reçus et traités par les stations d'épuration, charges entrantes et rendements "
        "épuratoires.",
        ("assainissement", "eaux usées", "station d'épuration", "STEP"),
        (DataTheme.ENVI,),
        _SHARED,
        (("step_id", "string", "Station"), ("month", "date", "Mois"), ("volume_m3", "number", "Volume (m³)")),
        "station d'épuration",
        "MONTHLY",
    ),
    Kind(
        "prix-eau",
        "Prix de l'eau et de l'assainissement",
        "Tarifs de l'eau potable et de l'assainissement collectif par commune : part fixe, part variable, "
        "redevances de l'agence de l'eau.",
        ("prix de l'eau", "tarifs", "assainissement", "redevances"),
        (DataTheme.ENVI, DataTheme.ECON),
        _OPEN,
        (("commune_insee", "string", "Commune"), ("year", "year", "Année"), ("prix_m3", "number", "Prix (€/m³)")),
        "commune",
        "ANNUAL",
    ),
    Kind(
        "tonnages-dechets",
        "Tonnages de déchets ménagers et assimilés collectés",
        "Tonnages mensuels des ordures ménagères résiduelles, de la collecte sélective, du verre et des biodéchets.",
        ("déchets", "ordures ménagères", "collecte sélective", "tri", "biodéchets"),
        (DataTheme.ENVI,),
        _SHARED,
        (("flux", "string", "Flux de déchets"), ("month", "date", "Mois"), ("tonnes", "number", "Tonnes")),
        "flux de collecte",
        "MONTHLY",
    ),
    Kind(
        "frequentation-decheteries",
        "Fréquentation des déchèteries",
        "Passages des usagers et apports par type de déchets dans les déchèteries du territoire.",
        ("déchèteries", "déchets", "apports", "encombrants", "végétaux"),
        (DataTheme.ENVI,),
        _SHARED,
        (("decheterie_id", "string", "Déchèterie"), ("day", "date", "Jour"), ("passages", "integer", "Passages")),
        "déchèterie",
        "DAILY",
    ),
    Kind(
        "points-apport-volontaire",
        "Points d'apport volontaire (verre, papiers, emballages)",
        "Emplacement des colonnes d'apport volontaire et taux de remplissage relevé par les capteurs.",
        ("apport volontaire", "verre", "colonnes", "tri sélectif"),
        (DataTheme.ENVI,),
        _OPEN,
        (("colonne_id", "string", "Colonne"), ("flux", "string", "Flux"), ("remplissage", "number", "Remplissage")),
        "colonne",
        "WEEKLY",
    ),
    Kind(
        "calendrier-collecte",
        "Calendrier de collecte des ordures ménagères",
        "Jours de passage de la collecte des ordures ménagères et des emballages, par rue et par secteur.",
        ("collecte", "calendrier", "ordures ménagères", "emballages"),
        (DataTheme.ENVI,),
        _OPEN,
        (("secteur", "string", "Secteur"), ("voie", "string", "Rue"), ("jour", "string", "Jour de collecte")),
        "secteur de collecte",
        "ANNUAL",
    ),
    Kind(
        "consommation-electrique-batiments",
        "Consommation électrique des bâtiments publics",
        "Consommations d'électricité et de gaz des bâtiments intercommunaux et communaux, relevées par les "
        "compteurs communicants, pour le suivi du décret tertiaire.",
        ("électricité", "énergie", "bâtiments publics", "décret tertiaire", "consommation"),
        (DataTheme.ENER,),
        _SHARED,
        (("batiment_id", "string", "Bâtiment"), ("month", "date", "Mois"), ("kwh", "number", "Énergie (kWh)")),
        "bâtiment",
        "MONTHLY",
    ),
    Kind(
        "installations-photovoltaiques",
        "Installations photovoltaïques raccordées au réseau",
        "Nombre et puissance des installations de production solaire photovoltaïque raccordées, par commune.",
        ("photovoltaïque", "solaire", "production d'énergie", "énergies renouvelables"),
        (DataTheme.ENER,),
        _OPEN,
        (("commune_insee", "string", "Commune"), ("installations", "integer", ""), ("puissance_kw", "number", "")),
        "commune",
        "QUARTERLY",
    ),
    Kind(
        "reseau-chaleur",
        "Réseau de chaleur : livraisons par sous-station",
        "Énergie thermique livrée par le réseau de chaleur urbain à chaque sous-station, et part d'énergies "
        "renouvelables (bois, récupération).",
        ("réseau de chaleur", "chauffage urbain", "biomasse", "énergie"),
        (DataTheme.ENER,),
        _PRIVATE,
        (("sous_station", "string", "Sous-station"), ("month", "date", "Mois"), ("mwh", "number", "Énergie (MWh)")),
        "sous-station",
        "MONTHLY",
    ),
    Kind(
        "eclairage-public",
        "Éclairage public : points lumineux",
        "Inventaire des points lumineux de l'éclairage public : type de lampe, puissance, horaires d'extinction.",
        ("éclairage public", "lampadaires", "LED", "sobriété énergétique"),
        (DataTheme.ENER, DataTheme.REGI),
        _OPEN,
        (("point_id", "string", "Point lumineux"), ("lampe", "string", "Type de lampe"), ("watts", "number", "")),
        "point lumineux",
        "ANNUAL",
    ),
    Kind(
        "autorisations-urbanisme",
        "Autorisations d'urbanisme (permis de construire, déclarations préalables)",
        "Permis de construire, permis d'aménager et déclarations préalables déposés et accordés, avec la surface "
        "de plancher créée.",
        ("permis de construire", "urbanisme", "autorisations", "logements"),
        (DataTheme.REGI,),
        _SHARED,
        (("dossier", "string", "Numéro de dossier"), ("depot", "date", "Dépôt"), ("surface_m2", "number", "")),
        "dossier",
        "MONTHLY",
    ),
    Kind(
        "plui-zonage",
        "Plan local d'urbanisme intercommunal (PLUi) : zonage",
        "Zones urbaines, à urbaniser, agricoles et naturelles du PLUi, au standard CNIG, et prescriptions.",
        ("PLUi", "zonage", "urbanisme", "CNIG", "documents d'urbanisme"),
        (DataTheme.REGI,),
        _OPEN,
        (("libelle", "string", "Libellé de zone"), ("typezone", "string", "Type de zone"), ("geom", "geojson", "")),
        "zone",
        "IRREG",
    ),
    Kind(
        "logements-sociaux",
        "Logements sociaux du parc locatif",
        "Logements locatifs des bailleurs sociaux : nombre de pièces, année de construction, étiquette énergétique.",
        ("logements sociaux", "bailleurs", "habitat", "RPLS"),
        (DataTheme.SOCI, DataTheme.REGI),
        _SHARED,
        (("logement_id", "string", "Logement"), ("pieces", "integer", "Pièces"), ("dpe", "string", "Étiquette DPE")),
        "logement",
        "ANNUAL",
    ),
    Kind(
        "friches",
        "Friches et foncier économique disponible",
        "Friches industrielles, commerciales et urbaines recensées, et terrains disponibles en zones d'activités.",
        ("friches", "foncier", "zones d'activités", "reconversion"),
        (DataTheme.REGI, DataTheme.ECON),
        _SHARED + _PRIVATE,
        (("site_id", "string", "Site"), ("surface_ha", "number", "Surface (ha)"), ("statut", "string", "Statut")),
        "site",
        "ANNUAL",
    ),
    Kind(
        "base-adresse-locale",
        "Base Adresse Locale",
        "Adresses des communes du territoire (voies, numéros, positions), au format BAL 1.4.",
        ("adresses", "BAL", "voies", "numérotation"),
        (DataTheme.REGI,),
        _OPEN,
        (
            ("cle_interop", "string", "Clé d'interopérabilité"),
            ("voie_nom", "string", "Voie"),
            ("numero", "integer", ""),
        ),
        "adresse",
        "WEEKLY",
    ),
    Kind(
        "arbres-alignement",
        "Arbres d'alignement et patrimoine arboré",
        "Inventaire des arbres gérés par la collectivité : essence, hauteur, circonférence, état sanitaire.",
        ("arbres", "patrimoine arboré", "essences", "espaces verts"),
        (DataTheme.ENVI,),
        _OPEN,
        (("arbre_id", "string", "Arbre"), ("essence", "string", "Essence"), ("hauteur_m", "number", "Hauteur (m)")),
        "arbre",
        "ANNUAL",
    ),
    Kind(
        "qualite-air",
        "Qualité de l'air : mesures des stations",
        "Concentrations horaires de dioxyde d'azote, particules fines PM10 et PM2,5 et ozone mesurées par les "
        "stations de surveillance.",
        ("qualité de l'air", "pollution", "particules fines", "ozone", "NO2"),
        (DataTheme.ENVI, DataTheme.HEAL),
        _OPEN,
        (("station", "string", "Station"), ("polluant", "string", "Polluant"), ("valeur", "number", "µg/m³")),
        "station de mesure",
        "HOURLY",
    ),
    Kind(
        "espaces-verts",
        "Espaces verts et parcs publics",
        "Parcs, jardins, squares et aires de jeux : surfaces, horaires d'ouverture, équipements.",
        ("espaces verts", "parcs", "jardins", "aires de jeux"),
        (DataTheme.ENVI, DataTheme.SOCI),
        _OPEN,
        (("site_id", "string", "Site"), ("nom", "string", "Nom"), ("surface_m2", "number", "Surface (m²)")),
        "site",
        "ANNUAL",
    ),
    Kind(
        "creches",
        "Places en crèche et établissements d'accueil du jeune enfant",
        "Établissements d'accueil du jeune enfant : capacité, places occupées, horaires et gestionnaire.",
        ("crèches", "petite enfance", "accueil du jeune enfant", "places"),
        (DataTheme.SOCI, DataTheme.EDUC),
        _SHARED,
        (("eaje_id", "string", "Établissement"), ("capacite", "integer", "Places"), ("gestionnaire", "string", "")),
        "établissement",
        "QUARTERLY",
    ),
    Kind(
        "equipements-sportifs",
        "Équipements sportifs",
        "Gymnases, piscines, stades et terrains de sport : localisation, disciplines, accessibilité.",
        ("équipements sportifs", "piscines", "gymnases", "sport"),
        (DataTheme.EDUC,),
        _OPEN,
        (("equipement_id", "string", "Équipement"), ("type", "string", "Type"), ("discipline", "string", "")),
        "équipement",
        "ANNUAL",
    ),
    Kind(
        "effectifs-scolaires",
        "Effectifs scolaires par école",
        "Nombre d'élèves inscrits par école maternelle et élémentaire et par niveau, à la rentrée.",
        ("écoles", "effectifs", "élèves", "rentrée scolaire"),
        (DataTheme.EDUC,),
        _SHARED,
        (("ecole_uai", "string", "UAI de l'école"), ("niveau", "string", "Niveau"), ("eleves", "integer", "Élèves")),
        "école",
        "ANNUAL",
    ),
    Kind(
        "budget",
        "Budget primitif et compte administratif",
        "Budget voté et exécuté de la collectivité, par chapitre et par fonction, au format du budget ouvert.",
        ("budget", "finances publiques", "compte administratif", "dépenses"),
        (DataTheme.ECON, DataTheme.GOVE),
        _OPEN,
        (("exercice", "year", "Exercice"), ("chapitre", "string", "Chapitre"), ("montant", "number", "Montant (€)")),
        "ligne budgétaire",
        "ANNUAL",
    ),
    Kind(
        "subventions-associations",
        "Subventions attribuées aux associations",
        "Subventions versées par la collectivité aux associations, au format du schéma national des subventions.",
        ("subventions", "associations", "aides", "montants"),
        (DataTheme.ECON, DataTheme.GOVE),
        _OPEN,
        (("beneficiaire", "string", "Bénéficiaire"), ("objet", "string", "Objet"), ("montant", "number", "")),
        "subvention",
        "ANNUAL",
    ),
    Kind(
        "marches-publics",
        "Marchés publics attribués",
        "Données essentielles de la commande publique : objet, titulaires, montants et durée des marchés.",
        ("marchés publics", "commande publique", "DECP", "achats"),
        (DataTheme.ECON, DataTheme.GOVE),
        _OPEN,
        (("marche_id", "string", "Marché"), ("titulaire_siret", "string", "Titulaire"), ("montant", "number", "")),
        "marché",
        "MONTHLY",
    ),
    Kind(
        "deliberations",
        "Délibérations du conseil communautaire",
        "Délibérations adoptées par le conseil communautaire : objet, date de séance, vote, acte télétransmis.",
        ("délibérations", "conseil communautaire", "actes", "séances"),
        (DataTheme.GOVE,),
        _OPEN,
        (("numero", "string", "Numéro"), ("seance", "date", "Séance"), ("objet", "string", "Objet")),
        "délibération",
        "MONTHLY",
    ),
    Kind(
        "hebergements-touristiques",
        "Hébergements touristiques",
        "Hôtels, campings, gîtes et chambres d'hôtes classés : capacité, classement, labels.",
        ("tourisme", "hébergements", "hôtels", "campings", "gîtes"),
        (DataTheme.ECON,),
        _OPEN,
        (("hebergement_id", "string", "Hébergement"), ("type", "string", "Type"), ("capacite", "integer", "Lits")),
        "hébergement",
        "QUARTERLY",
    ),
    Kind(
        "defibrillateurs",
        "Défibrillateurs automatisés externes (DAE)",
        "Emplacement, accessibilité et maintenance des défibrillateurs installés dans les établissements publics.",
        ("défibrillateurs", "DAE", "santé", "secours"),
        (DataTheme.HEAL,),
        _OPEN,
        (("dae_id", "string", "Défibrillateur"), ("acces", "string", "Accès"), ("maintenance", "date", "")),
        "défibrillateur",
        "MONTHLY",
    ),
    Kind(
        "energie-entreprises-za",
        "Consommations d'énergie des entreprises des zones d'activités",
        "Consommations agrégées d'électricité et de gaz des entreprises implantées en zones d'activités, "
        "transmises par les gestionnaires de réseau.",
        ("énergie", "entreprises", "zones d'activités", "gaz", "électricité"),
        (DataTheme.ENER, DataTheme.ECON),
        _PRIVATE,
        (("zone_id", "string", "Zone d'activités"), ("year", "year", "Année"), ("mwh", "number", "Énergie (MWh)")),
        "zone d'activités",
        "ANNUAL",
    ),
    Kind(
        "fibre-optique",
        "Déploiement de la fibre optique : locaux raccordables",
        "Locaux raccordables à la fibre optique (FTTH) par commune et par opérateur d'infrastructure.",
        ("fibre optique", "FTTH", "très haut débit", "numérique"),
        (DataTheme.TECH,),
        _PRIVATE + _SHARED,
        (("commune_insee", "string", "Commune"), ("operateur", "string", "Opérateur"), ("locaux", "integer", "")),
        "commune",
        "QUARTERLY",
    ),
)
"""Kinds of datasets EPCIs publish, beyond the four demo datasets of ``catalog.seeds``."""

_PERIODS = ("par mois", "par an", "par trimestre", "par commune", "par quartier", "historique")


def _territories() -> list[dict[str, Any]]:
    epcis: list[dict[str, Any]] = json.loads(REFERENTIEL.read_text(encoding="utf-8"))
    # The 100 most populous of the 113 EPCIs: the ones most likely to publish data.
    return sorted(epcis, key=lambda epci: (-epci["populationTotale"], epci["siren"]))[:TERRITORIES]


def _metadata(kind: Kind, seed: SeedTerritory, rng: random.Random) -> DatasetMetadata:
    status, access = rng.choice(kind.statuses)
    hosting_node = seed.node
    document: dict[str, Any] = {
        "title": kind.title,
        "description": kind.description,
        "theme": list(kind.themes),
        "keywords": list(kind.keywords),
        "status": status,
        "access": access,
        "contact_point": {"name": f"Service données — {seed.name}", "email": f"donnees@{seed.siren}.example.fr"},
        "spatial": {"communes": list(seed.communes)},
        "frequency": kind.frequency,
        "granularity": {"spatial": kind.granularity},
        "table_schema": {
            "fields": [
                {"name": name, "type": kind_type, **({"title": title} if title else {})}
                for name, kind_type, title in kind.fields
            ]
        },
        "hosting": {"node": hosting_node, "country": "FR"},
    }
    if access == "open":
        document["licence"] = rng.choice(sorted(LICENCES))
    return DatasetMetadata.model_validate(document)


def build_datasets(seed: int = SEED) -> list[PublishedDataset]:
    """10,000 published datasets: 100 per territory, from the demo templates and ``KINDS``, in variants."""
    rng = random.Random(seed)
    epoch = datetime(2020, 1, 1, tzinfo=UTC)
    published: list[PublishedDataset] = []
    for epci in _territories():
        communes = [commune for commune in epci["communes"]]
        territory = SeedTerritory(
            siren=epci["siren"],
            name=epci["nom"],
            communes=tuple(commune["insee"] for commune in communes),
            node=f"node-{communes[0]['insee'][:2].lower()}",
        )
        templates = [(slug, metadata) for slug, metadata in demo_datasets(territory)]
        templates += [(kind.slug, _metadata(kind, territory, rng)) for kind in KINDS]
        for index in range(PER_TERRITORY):
            slug, template = templates[index % len(templates)]
            variant = index // len(templates)
            commune = rng.choice(communes)["nom"]
            year = 2018 + rng.randrange(8)
            suffix = rng.choice(
                (f"{year}", commune, rng.choice(_PERIODS), f"{rng.choice(_PERIODS)} {year}", territory.name)
            )
            extra = rng.sample(sorted({k for _, m in templates for k in m.keywords} - set(template.keywords)), 2)
            # model_copy does not re-validate: only text is varied, so the template's coherence is kept.
            metadata = template.model_copy(
                update={
                    "title": f"{template.title.split(' — ')[0]} — {suffix}",
                    "description": f"{template.description} Édition {year}, {commune}.",
                    "keywords": [*template.keywords, *extra][: 4 + variant],
                }
            )
            modified = epoch + timedelta(seconds=rng.randrange(6 * 365 * 86400))
            published.append(
                PublishedDataset.model_validate(
                    {
                        "id": f"{territory.siren}/{slug}-{variant}",
                        "territory": territory.siren,
                        "slug": f"{slug}-{variant}",
                        "uri": f"https://catalogue.{territory.node}.example.fr/datasets/{territory.siren}/{slug}-{variant}",
                        "publisher_name": territory.name,
                        "node": territory.node,
                        "catalog_url": f"https://catalogue.{territory.node}.example.fr",
                        "exchange_url": f"https://echange.{territory.node}.example.fr",
                        "revision": 1 + rng.randrange(5),
                        "created": epoch,
                        "modified": modified,
                        "published": modified,
                        "metadata": metadata,
                    }
                )
            )
    return published


# --------------------------------------------------------------------------------------------------- queries

_SINGLE = (
    "vélo",
    "velos",
    "eau",
    "déchets",
    "dechets",
    "bus",
    "énergie",
    "stationnement",
    "permis",
    "arbres",
    "qualité",
    "collecte",
    "photovoltaïque",
    "recharge",
    "crèches",
    "creche",
    "budget",
    "subventions",
    "assainissement",
    "tourisme",
    "fibre",
    "friches",
    "piscines",
    "délibérations",
    "adresses",
    "covoiturage",
    "électricité",
    "logements",
    "pollution",
    "fuites",
)
_DOUBLE = (
    "comptages vélos",
    "velo comptage",
    "qualite eau",
    "qualité de l'air",
    "déchets ménagers",
    "dechets menagers",
    "bornes recharge",
    "consommations électriques",
    "consommation d'eau",
    "permis de construire",
    "réseau de chaleur",
    "reseau chaleur",
    "logements sociaux",
    "transport en commun",
    "éclairage public",
    "espaces verts",
    "marchés publics",
    "zones d'activités",
    "eaux usées",
    "énergies renouvelables",
)


def build_queries(datasets: list[PublishedDataset], seed: int = SEED) -> list[SearchQuery]:
    """A fixed mix of ~500 searches over ``datasets``."""
    rng = random.Random(seed + 1)
    territories = sorted({dataset.territory for dataset in datasets})
    communes = sorted({code for dataset in datasets for code in dataset.metadata.spatial.communes})
    names = sorted({dataset.publisher_name.split()[-1] for dataset in datasets})
    themes = [theme.value for theme in THEME_LABELS]
    queries: list[dict[str, Any]] = []
    queries += [{"q": rng.choice(_SINGLE)} for _ in range(150)]
    queries += [{"q": rng.choice(_DOUBLE)} for _ in range(100)]
    for _ in range(100):
        query: dict[str, Any] = {"q": rng.choice(_SINGLE + _DOUBLE)}
        for facet, values in (
            ("territory", rng.sample(territories, rng.randint(1, 3))),
            ("theme", [rng.choice(themes)]),
            ("status", [rng.choice(["public", "general-interest", "private-territorial-interest", "personal"])]),
            ("access", [rng.choice(["open", "restricted", "protected"])]),
            ("format", [rng.choice(["CSV", "API"])]),
        ):
            if rng.random() < 0.4:
                query[facet] = values
        queries.append(query)
    for _ in range(75):
        query = {}
        facet = rng.choice(("territory", "theme", "status", "access", "licence"))
        if facet == "territory":
            query["territory"] = rng.sample(territories, rng.randint(1, 5))
        elif facet == "theme":
            query["theme"] = rng.sample(themes, rng.randint(1, 2))
        elif facet == "licence":
            query["licence"] = [rng.choice(sorted(LICENCES))]
        else:
            query[facet] = [rng.choice(["open", "restricted"] if facet == "access" else ["public", "personal"])]
        if rng.random() < 0.5:
            query["access"] = ["open"]
        queries.append(query)
    for _ in range(50):
        query = {"q": rng.choice(_SINGLE)} if rng.random() < 0.6 else {"theme": [rng.choice(themes)]}
        query |= {"page": rng.randint(2, 10), "per_page": rng.choice((20, 50))}
        queries.append(query)
    queries += [{"q": rng.choice(communes)} for _ in range(10)]
    queries += [{"q": rng.choice(territories)} for _ in range(5)]
    queries += [{"q": f"{rng.choice(_SINGLE)} {rng.choice(names)}"} for _ in range(10)]
    return [SearchQuery.model_validate(query) for query in queries]


# --------------------------------------------------------------------------------------------------- FTS5 baseline

_FTS_COLUMNS = tuple(name for name, _, _ in FIELDS)
_FTS_WEIGHTS = ", ".join(str(weight) for _, weight, _ in FIELDS)  # the same field weights as the index
_FTS_INSERT = f"INSERT INTO docs (rowid, {', '.join(_FTS_COLUMNS)}) VALUES (?{', ?' * len(_FTS_COLUMNS)})"


def _fts_terms(q: str) -> str:
    """The query as an FTS5 AND query: the words the index keeps (stopwords dropped), quoted, unstemmed."""
    return " ".join(f'"{word}"' for word in dict.fromkeys(split_words(q)) if analyze(word))


class Fts:
    """The same documents in SQLite FTS5, with the facet values in a side table for the filters."""

    def __init__(self, datasets: list[PublishedDataset]) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.executescript(
            f"""
            CREATE VIRTUAL TABLE docs USING fts5({", ".join(_FTS_COLUMNS)},
                tokenize = 'unicode61 remove_diacritics 2');
            CREATE TABLE meta (rowid INTEGER PRIMARY KEY, id TEXT NOT NULL, modified REAL NOT NULL);
            CREATE INDEX meta_recent ON meta (modified DESC, id);
            CREATE TABLE facet (facet TEXT NOT NULL, value TEXT NOT NULL, rowid INTEGER NOT NULL);
            CREATE INDEX facet_value ON facet (facet, value, rowid);
            """
        )
        with self.db:
            for rowid, dataset in enumerate(datasets, start=1):
                metadata = dataset.metadata
                self.db.execute(_FTS_INSERT, (rowid, *field_texts(dataset)))
                self.db.execute("INSERT INTO meta VALUES (?, ?, ?)", (rowid, dataset.id, dataset.modified.timestamp()))
                values = [("territory", dataset.territory), ("status", metadata.status.value)]
                values += [("access", metadata.access.value)]
                values += [("theme", theme.value) for theme in metadata.theme]
                values += [("format", value) for value in distribution_formats(metadata)]
                if metadata.licence:
                    values.append(("licence", metadata.licence))
                self.db.executemany("INSERT INTO facet VALUES (?, ?, ?)", [(f, v, rowid) for f, v in values])

    def search(self, query: SearchQuery) -> tuple[int, list[str]]:
        """(total, ids of the page), ranked by bm25 then date, like the index."""
        where, parameters = [], []
        for facet in FACETS:
            values = [str(getattr(value, "value", value)) for value in getattr(query, facet)]
            if values:
                marks = ",".join("?" * len(values))
                where.append(f"meta.rowid IN (SELECT rowid FROM facet WHERE facet = ? AND value IN ({marks}))")
                parameters += [facet, *values]
        offset = (query.page - 1) * query.per_page
        terms = _fts_terms(query.q) if query.q else ""
        if terms:
            match = ["docs MATCH ?", *where]
            sql = (
                f"SELECT meta.id FROM docs JOIN meta ON meta.rowid = docs.rowid WHERE {' AND '.join(match)} "
                f"ORDER BY bm25(docs, {_FTS_WEIGHTS}), meta.modified DESC, meta.id LIMIT ? OFFSET ?"
            )
            count_sql = f"SELECT count(*) FROM docs JOIN meta ON meta.rowid = docs.rowid WHERE {' AND '.join(match)}"
            arguments = [terms, *parameters]
        else:
            clause = f"WHERE {' AND '.join(where)}" if where else ""
            sql = f"SELECT meta.id FROM meta {clause} ORDER BY meta.modified DESC, meta.id LIMIT ? OFFSET ?"
            count_sql = f"SELECT count(*) FROM meta {clause}"
            arguments = parameters
        ids = [row[0] for row in self.db.execute(sql, [*arguments, query.per_page, offset])]
        total = self.db.execute(count_sql, arguments).fetchone()[0]
        return total, ids


# --------------------------------------------------------------------------------------------------- run


def _timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def run() -> Result:
    """Run the benchmark and return its result."""
    datasets = build_datasets()
    queries = build_queries(datasets)

    rss_before = _rss_mib()
    index = SearchIndex()
    start = time.perf_counter()
    for dataset in datasets:
        index.upsert(dataset)
    build = time.perf_counter() - start
    rss_index = _rss_mib() - rss_before

    start = time.perf_counter()
    fts = Fts(datasets)
    fts_build = time.perf_counter() - start

    passes: dict[str, list[list[float]]] = {"index": [], "fts": []}
    totals: dict[str, list[int]] = {"index": [], "fts": []}
    for _ in range(2):  # the first pass fills the index's impact caches; the second runs on warm caches
        passes["index"].append([_timed(partial(index.search, query)) for query in queries])
        passes["fts"].append([_timed(partial(fts.search, query)) for query in queries])
    totals["index"] = [index.search(query).total for query in queries]
    totals["fts"] = [fts.search(query)[0] for query in queries]

    update_sample = datasets[:: len(datasets) // 200]
    updates = [
        _timed(partial(index.upsert, dataset.model_copy(update={"revision": dataset.revision + 1})))
        for dataset in update_sample
    ]

    rows = []
    for label, pass_index in (("first pass", 0), ("second pass", 1)):
        for q in (50, 95, 99):
            ours, base = percentile(passes["index"][pass_index], q), percentile(passes["fts"][pass_index], q)
            rows.append([f"search p{q} ({label})", ms(base), ms(ours), f"{ours / base:.2f}×"])
    rows.append(
        [
            f"build ({len(datasets):,} datasets)",
            f"{fts_build:.2f} s",
            f"{build:.2f} s",
            f"{build / fts_build:.2f}×",
        ]
    )
    with_q = [i for i, query in enumerate(queries) if query.q]
    ours_hits = sum(totals["index"][i] for i in with_q) / len(with_q)
    fts_hits = sum(totals["fts"][i] for i in with_q) / len(with_q)
    rows.append(["mean total per text query", f"{fts_hits:,.0f}", f"{ours_hits:,.0f}", f"{ours_hits / fts_hits:.2f}×"])
    return Result(
        name="catalog_search",
        title="Catalogue search: in-memory BM25F index with facets vs SQLite FTS5",
        header=["measure", "SQLite FTS5 (baseline)", "Maillage SearchIndex", "ratio"],
        rows=rows,
        notes=[
            f"{len(datasets):,} synthetic datasets of {TERRITORIES} EPCIs of Bourgogne-Franche-Comté "
            f"({len(KINDS) + 4} kinds in variants); {len(queries)} searches per pass, single-threaded: "
            f"{len(with_q)} with words, the others filters only; pages up to 10, 20 or 50 per page.",
            "The index answers with the page, the total and six disjunctive facets (territory, theme, status, "
            "access, licence, format); FTS5 answers the page (bm25 with the same field weights, LIMIT/OFFSET) and "
            "a COUNT, without facets. FTS5 runs in memory (`:memory:`).",
            "FTS5's `unicode61 remove_diacritics 2` folds accents but does not stem: 'velos' or 'consommations' "
            "miss 'vélo' and 'consommation', hence fewer hits per text query than the index's French analyzer.",
            f"First pass: BM25F impacts are computed per key on first use and cached; second pass: warm. "
            f"Upsert of a new revision into the full index: p50 {ms(percentile(updates, 50))}, "
            f"p99 {ms(percentile(updates, 99))}. Resident memory added by the index: ~{rss_index:.0f} MiB "
            f"(datasets excluded: they are shared with the benchmark). Stemmer: {STEMMER_IMPLEMENTATION}.",
        ],
    )
