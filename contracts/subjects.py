"""Subject builders. Every token is validated: SIRENs are digits, ids are slugs, nothing else reaches a subject.

Convention: ``<domain>.<entity>.<action>.<key tokens>`` for events (captured by the ``<domain>.>`` streams),
``exchange.<siren>.query`` for request-reply, ``audit.<siren>`` for audit records,
``deadletter.<consumer>`` for messages a consumer gave up on.
"""

from __future__ import annotations

from contracts.identifiers import validate_node_id, validate_siren, validate_siret, validate_slug

__all__ = [
    "catalog_dataset_upserted",
    "catalog_dataset_withdrawn",
    "dead_letter",
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


def dead_letter(consumer: str) -> str:
    return f"deadletter.{validate_slug(consumer)}"
