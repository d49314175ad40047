"""Maillage contracts: event models, subjects, streams, identifiers. Shared by every service; imports only pydantic."""

from contracts.envelope import Envelope, new_event_id
from contracts.events import Event, event_class, event_classes
from contracts.identifiers import Siren, Siret, Slug, SubjectTokenError, validate_siren, validate_slug
from contracts.streams import KV_BUCKETS, STREAMS, KeyValueBucket, Stream

__all__ = [
    "KV_BUCKETS",
    "STREAMS",
    "Envelope",
    "Event",
    "KeyValueBucket",
    "Siren",
    "Siret",
    "Slug",
    "Stream",
    "SubjectTokenError",
    "event_class",
    "event_classes",
    "new_event_id",
    "validate_siren",
    "validate_slug",
]
