"""Base class of every event payload: a versioned pydantic model bound to a subject pattern."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

__all__ = ["CLOUD_TYPE_PREFIX", "Event", "event_class", "event_classes", "register"]

CLOUD_TYPE_PREFIX = "fr.maillage."

_REGISTRY: dict[str, type[Event]] = {}


class Event(BaseModel):
    """An event's data. Subclasses set ``event_name`` (``<domain>.<entity>.<action>``), ``version``, ``summary``,
    ``subject_pattern`` and ``producer`` (the service that emits it),
    and implement :meth:`subject` with the subject builders of :mod:`contracts.subjects`.

    A breaking change to a payload is a new class with ``version + 1``; both versions stay registered while
    consumers migrate.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_name: ClassVar[str]
    version: ClassVar[int]
    summary: ClassVar[str]
    subject_pattern: ClassVar[str]
    producer: ClassVar[str]
    consumers: ClassVar[tuple[str, ...]] = ()
    subject_parameters: ClassVar[dict[str, str]] = {}

    @classmethod
    def cloud_type(cls) -> str:
        return f"{CLOUD_TYPE_PREFIX}{cls.event_name}.v{cls.version}"

    def subject(self) -> str:
        raise NotImplementedError

    def entity(self) -> str | None:
        """The CloudEvents ``subject``: which entity the event is about."""
        return None

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def register(cls: type[Event]) -> type[Event]:
    """Class decorator adding an event to the catalogue used for parsing and for the AsyncAPI document."""
    cloud_type = cls.cloud_type()
    if cloud_type in _REGISTRY and _REGISTRY[cloud_type] is not cls:
        raise ValueError(f"event type {cloud_type} registered twice")
    _REGISTRY[cloud_type] = cls
    return cls


def event_class(cloud_type: str) -> type[Event]:
    """The model of a CloudEvents ``type``; KeyError when unknown."""
    return _REGISTRY[cloud_type]


def event_classes() -> list[type[Event]]:
    return sorted(_REGISTRY.values(), key=lambda cls: cls.cloud_type())
