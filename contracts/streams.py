"""JetStream streams and KV buckets of the federation, declared once here and created by the kit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["KV_BUCKETS", "STREAMS", "KeyValueBucket", "Stream", "stream_for_subject"]

DAY = 24 * 3600


@dataclass(frozen=True, slots=True)
class Stream:
    name: str
    subjects: tuple[str, ...]
    description: str
    storage: Literal["file", "memory"] = "file"
    max_age_seconds: int = 0  # 0 keeps messages until limits say otherwise
    duplicate_window_seconds: int = 120
    max_msgs_per_subject: int = -1  # -1: unlimited; 1 keeps only the latest message of each subject


@dataclass(frozen=True, slots=True)
class KeyValueBucket:
    name: str
    description: str
    history: int = 1
    storage: Literal["file", "memory"] = "file"


STREAMS: tuple[Stream, ...] = (
    Stream(
        "CATALOG",
        ("catalog.>",),
        "Dataset advertisements of every node, replayed to build federated indexes. Subjects name one dataset "
        "and one action, so keeping the latest message per subject keeps everything a replay needs.",
        max_msgs_per_subject=1,
    ),
    Stream("REGISTRY", ("registry.>",), "Federation directory, agreement transitions and API key changes."),
    Stream("CONSENT", ("consent.>",), "Consent events, flowing to the exchanges that compute on consented subjects."),
    Stream("AUDIT", ("audit.>",), "Hash-chained audit records of every query, per territory."),
    Stream(
        "INGEST",
        ("exchange.ingest.>",),
        "Sensor readings awaiting ingestion into a territory's dataset; acked once committed into a version.",
        max_age_seconds=7 * DAY,
    ),
    Stream(
        "DEADLETTER",
        ("deadletter.>",),
        "Messages a durable consumer gave up on after bounded redelivery, kept for inspection.",
        max_age_seconds=30 * DAY,
    ),
)

KV_BUCKETS: tuple[KeyValueBucket, ...] = (
    KeyValueBucket("grants", "Enforceable terms of every ACTIVE agreement, keyed by agreement id.", history=5),
)


def _captures(pattern: str, subject: str) -> bool:
    tokens, wanted = pattern.split("."), subject.split(".")
    for index, token in enumerate(tokens):
        if token == ">":
            return len(wanted) > index
        if index >= len(wanted) or (token != "*" and token != wanted[index]):
            return False
    return len(tokens) == len(wanted)


def stream_for_subject(subject: str) -> Stream:
    """The stream whose subject patterns capture ``subject`` (NATS wildcards ``*`` and ``>``)."""
    for stream in STREAMS:
        if any(_captures(pattern, subject) for pattern in stream.subjects):
            return stream
    raise LookupError(f"no stream captures subject {subject!r}")
