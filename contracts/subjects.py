"""Subject builders. Every token is validated: SIRENs are digits, ids are slugs, nothing else reaches a subject.

Convention: ``<domain>.<entity>.<action>.<key tokens>`` for events (captured by the ``<domain>.>`` streams),
``exchange.<siren>.query`` for request-reply, ``audit.<siren>`` for audit records,
``deadletter.<consumer>`` for messages a consumer gave up on.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from contracts.identifiers import SubjectTokenError, validate_node_id, validate_siren, validate_siret, validate_slug

__all__ = [
    "AgreementAction",
    "audit",
    "audit_destroyed",
    "consent_changed",
    "purpose_token",
    "catalog_dataset_upserted",
    "catalog_dataset_withdrawn",
    "dead_letter",
    "exchange_ingest",
    "exchange_query",
    "exchange_subject",
    "registry_agreement",
    "registry_apikey",
    "registry_node_registered",
    "registry_organisation_admitted",
    "registry_territory_registered",
]


def registry_territory_registered(siren: str) -> str:
    return f"registry.territory.registered.{validate_siren(siren)}"


def registry_node_registered(node_id: str) -> str:
    return f"registry.node.registered.{validate_node_id(node_id)}"


def catalog_dataset_upserted(siren: str, slug: str) -> str:
    return f"catalog.dataset.upserted.{validate_siren(siren)}.{validate_slug(slug)}"


def catalog_dataset_withdrawn(siren: str, slug: str) -> str:
    return f"catalog.dataset.withdrawn.{validate_siren(siren)}.{validate_slug(slug)}"


def registry_organisation_admitted(siret: str) -> str:
    return f"registry.organisation.admitted.{validate_siret(siret)}"


AgreementAction = Literal[
    "requested",
    "offered",
    "countered",
    "accepted",
    "approved",
    "activated",
    "suspended",
    "resumed",
    "revoked",
    "terminated",
    "expired",
    "rejected",
]
_AGREEMENT_ACTIONS = frozenset(get_args(AgreementAction))


def registry_agreement(action: str, agreement_id: str) -> str:
    if action not in _AGREEMENT_ACTIONS:
        raise SubjectTokenError(f"unknown agreement action {action!r}")
    return f"registry.agreement.{action}.{validate_slug(agreement_id)}"


def audit(siren: str) -> str:
    return f"audit.{validate_siren(siren)}"


def audit_destroyed(siren: str, slug: str) -> str:
    return f"audit.destroyed.{validate_siren(siren)}.{validate_slug(slug)}"


def exchange_query(siren: str) -> str:
    return f"exchange.{validate_siren(siren)}.query"


def exchange_subject(siren: str) -> str:
    return f"exchange.{validate_siren(siren)}.subject"


def exchange_ingest(siren: str, slug: str) -> str:
    return f"exchange.ingest.{validate_siren(siren)}.{validate_slug(slug)}"


def dead_letter(consumer: str) -> str:
    return f"deadletter.{validate_slug(consumer)}"


_APIKEY_ACTIONS = frozenset({"created", "rotated", "revoked", "expired"})
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def registry_apikey(action: str, key_id: str) -> str:
    """``registry.apikey.<action>.<key id>``: the key id must be a lowercase canonical UUID."""
    if action not in _APIKEY_ACTIONS:
        raise SubjectTokenError(f"unknown API key action {action!r}")
    if not isinstance(key_id, str) or _UUID_RE.fullmatch(key_id) is None:
        raise SubjectTokenError(f"API key id must be a lowercase UUID, got {key_id!r}")
    return f"registry.apikey.{action}.{key_id}"


def purpose_token(iri: str) -> str:
    """The subject token of a DPV purpose IRI: its concept, lower case (``https://w3id.org/dpv#ScientificResearch``
    → ``scientificresearch``)."""
    concept = iri.rsplit("#", 1)[-1].rsplit("/", 1)[-1].lower()
    if not re.fullmatch(r"[a-z][a-z0-9]{0,62}", concept):
        raise SubjectTokenError(f"not a purpose IRI: {iri!r}")
    return concept


def consent_changed(siren: str, purpose_iri: str) -> str:
    return f"consent.record.changed.{validate_siren(siren)}.{purpose_token(purpose_iri)}"
