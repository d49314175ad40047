"""Every event model of the federation. Importing this package registers them all."""

from contracts.events.audit import AuditRecordedV1, DataDestroyedV1
from contracts.events.base import CLOUD_TYPE_PREFIX, Event, event_class, event_classes, register
from contracts.events.catalog import DatasetUpsertedV1, DatasetWithdrawnV1
from contracts.events.consent import ConsentChangedV1
from contracts.events.registry import (
    AgreementTransitionedV1,
    ApiKeyCreatedV1,
    ApiKeyExpiredV1,
    ApiKeyRevokedV1,
    ApiKeyRotatedV1,
    NodeRegisteredV1,
    OrganisationAdmittedV1,
    TerritoryRegisteredV1,
)

__all__ = [
    "AuditRecordedV1",
    "AgreementTransitionedV1",
    "ApiKeyCreatedV1",
    "ApiKeyExpiredV1",
    "ApiKeyRevokedV1",
    "ApiKeyRotatedV1",
    "CLOUD_TYPE_PREFIX",
    "DataDestroyedV1",
    "ConsentChangedV1",
    "DatasetUpsertedV1",
    "DatasetWithdrawnV1",
    "Event",
    "NodeRegisteredV1",
    "OrganisationAdmittedV1",
    "TerritoryRegisteredV1",
    "event_class",
    "event_classes",
    "register",
]
