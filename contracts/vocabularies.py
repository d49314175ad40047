"""Controlled vocabularies of dataset metadata: EU data themes and frequencies, licences, GDPR legal bases.

Values are the short codes of the EU Publications Office authority tables (stored and exchanged), each with its
authority URI (used in the DCAT-AP export).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DATA_THEME_BASE",
    "DPV_BASE",
    "DPV_PURPOSES",
    "FREQUENCY_BASE",
    "LICENCES",
    "DataTheme",
    "Frequency",
    "LegalBasis",
    "Licence",
    "legal_basis_iri",
]

DATA_THEME_BASE = "http://publications.europa.eu/resource/authority/data-theme/"
FREQUENCY_BASE = "http://publications.europa.eu/resource/authority/frequency/"


class DataTheme(StrEnum):
    """EU data-theme vocabulary (DCAT-AP ``dcat:theme``)."""

    AGRI = "AGRI"
    ECON = "ECON"
    EDUC = "EDUC"
    ENER = "ENER"
    ENVI = "ENVI"
    GOVE = "GOVE"
    HEAL = "HEAL"
    INTR = "INTR"
    JUST = "JUST"
    OP_DATPRO = "OP_DATPRO"
    REGI = "REGI"
    SOCI = "SOCI"
    TECH = "TECH"
    TRAN = "TRAN"

    @property
    def uri(self) -> str:
        return DATA_THEME_BASE + self.value

    @property
    def label(self) -> str:
        """The official French label (Publications Office authority table)."""
        return _THEME_LABELS[self]


_THEME_LABELS = {
    DataTheme.AGRI: "Agriculture, pêche, sylviculture et alimentation",
    DataTheme.ECON: "Économie et finances",
    DataTheme.EDUC: "Éducation, culture et sport",
    DataTheme.ENER: "Énergie",
    DataTheme.ENVI: "Environnement",
    DataTheme.GOVE: "Gouvernement et secteur public",
    DataTheme.HEAL: "Santé",
    DataTheme.INTR: "Questions internationales",
    DataTheme.JUST: "Justice, système juridique et sécurité publique",
    DataTheme.OP_DATPRO: "Données provisoires",
    DataTheme.REGI: "Régions et villes",
    DataTheme.SOCI: "Population et société",
    DataTheme.TECH: "Science et technologie",
    DataTheme.TRAN: "Transports",
}


class Frequency(StrEnum):
    """EU frequency vocabulary (DCAT-AP ``dct:accrualPeriodicity``)."""

    CONT = "CONT"
    UPDATE_CONT = "UPDATE_CONT"
    MIN_1 = "1MIN"
    MIN_5 = "5MIN"
    MIN_10 = "10MIN"
    MIN_15 = "15MIN"
    MIN_30 = "30MIN"
    HOURLY = "HOURLY"
    HRS_12 = "12HRS"
    DAILY = "DAILY"
    WEEKLY = "WEEKLY"
    BIWEEKLY = "BIWEEKLY"
    MONTHLY = "MONTHLY"
    BIMONTHLY = "BIMONTHLY"
    QUARTERLY = "QUARTERLY"
    ANNUAL_2 = "ANNUAL_2"
    ANNUAL = "ANNUAL"
    BIENNIAL = "BIENNIAL"
    TRIENNIAL = "TRIENNIAL"
    IRREG = "IRREG"
    NEVER = "NEVER"
    OTHER = "OTHER"
    UNKNOWN = "UNKNOWN"

    @property
    def uri(self) -> str:
        return FREQUENCY_BASE + self.value


@dataclass(frozen=True, slots=True)
class Licence:
    uri: str
    label: str
    open: bool


LICENCES: dict[str, Licence] = {
    licence.uri: licence
    for licence in (
        Licence("https://www.etalab.gouv.fr/licence-ouverte-open-licence/", "Licence Ouverte / Open Licence 2.0", True),
        Licence("https://opendatacommons.org/licenses/odbl/1-0/", "Open Database License (ODbL) 1.0", True),
        Licence("https://creativecommons.org/licenses/by/4.0/", "Creative Commons Attribution 4.0", True),
        Licence("https://creativecommons.org/licenses/by-sa/4.0/", "Creative Commons Attribution-ShareAlike 4.0", True),
        Licence("https://creativecommons.org/publicdomain/zero/1.0/", "Creative Commons Zero 1.0", True),
    )
}
"""Licences accepted by URI. Only open licences exist here: data that is not open is shared under an agreement."""


class LegalBasis(StrEnum):
    """Lawful bases of GDPR article 6(1), as DPV-GDPR codes."""

    CONSENT = "A6-1-a"
    CONTRACT = "A6-1-b"
    LEGAL_OBLIGATION = "A6-1-c"
    VITAL_INTEREST = "A6-1-d"
    PUBLIC_TASK = "A6-1-e"
    LEGITIMATE_INTEREST = "A6-1-f"


def legal_basis_iri(basis: LegalBasis) -> str:
    """The W3C DPV-GDPR IRI of a legal basis."""
    return f"https://w3id.org/dpv/legal/eu/gdpr#{basis.value}"


DPV_BASE = "https://w3id.org/dpv#"

DPV_PURPOSES: dict[str, str] = {
    f"{DPV_BASE}{concept}": label
    for concept, label in (
        ("ServiceProvision", "Fourniture d'un service"),
        ("ServiceOptimisation", "Optimisation d'un service"),
        ("ResearchAndDevelopment", "Recherche et développement"),
        ("AcademicResearch", "Recherche académique"),
        ("ScientificResearch", "Recherche scientifique"),
        ("NonCommercialResearch", "Recherche non commerciale"),
        ("CommercialResearch", "Recherche commerciale"),
        ("OrganisationGovernance", "Gouvernance de l'organisation"),
        ("LegalCompliance", "Respect d'une obligation légale"),
        ("FulfilmentOfObligation", "Exécution d'une obligation"),
        ("EnforceSecurity", "Sécurité"),
        ("PublicRelations", "Information du public"),
    )
}
"""W3C DPV purposes accepted in agreements and consent records, with a French label."""
