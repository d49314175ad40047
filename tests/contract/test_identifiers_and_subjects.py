"""Identifiers and subject builders refuse every token that is not a validated identifier."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts import subjects
from contracts.envelope import Envelope
from contracts.events import TerritoryRegisteredV1, event_class
from contracts.identifiers import SubjectTokenError, validate_siren, validate_siret, validate_slug
from contracts.streams import stream_for_subject

HOSTILE = [
    "../etc",
    "%2e%2e",
    "*",
    ">",
    "a b",
    "A",
    "dijon.metro",
    "dijon>",
    "",
    "é",
    "-a",
    "a-",
    "a--b",
    "x" * 65,
    "242100410\n",
    "２４２１００４１０",
]


@pytest.mark.parametrize("value", ["242100410", "242500361", "200069540", "200068070"])
def test_real_sirens_are_valid(value):
    assert validate_siren(value) == value
    assert subjects.registry_territory_registered(value) == f"registry.territory.registered.{value}"


@pytest.mark.parametrize("value", [*HOSTILE, "242100411", "24210041", "2421004100"])
def test_bad_sirens_are_refused(value):
    with pytest.raises(SubjectTokenError):
        subjects.registry_territory_registered(value)


@pytest.mark.parametrize("value", HOSTILE)
def test_bad_slugs_are_refused(value):
    with pytest.raises(SubjectTokenError):
        subjects.registry_node_registered(value)
    with pytest.raises(SubjectTokenError):
        validate_slug(value)


def test_slugs_and_sirets():
    assert validate_slug("comptages-velo-2024") == "comptages-velo-2024"
    assert validate_siret("24210041000011") == "24210041000011"
    with pytest.raises(SubjectTokenError):
        validate_siret("24210041100011")


def test_event_models_refuse_unknown_fields_and_bad_tokens():
    with pytest.raises(ValidationError):
        TerritoryRegisteredV1(siren="242100410", name="x", kind="CC", population=1, communes=[], extra="no")
    with pytest.raises(ValidationError):
        TerritoryRegisteredV1(siren="24210041*", name="x", kind="CC", population=1, communes=[])


def test_envelope_round_trip_and_registry():
    event = TerritoryRegisteredV1(
        siren="242100410", name="Dijon Métropole", kind="METRO", population=263672, communes=["21231"]
    )
    envelope = Envelope(source="urn:maillage:registry:registry", type=event.cloud_type(), data=event.to_data())
    parsed = Envelope.from_bytes(envelope.to_bytes())
    assert parsed == envelope
    assert event_class(parsed.type).model_validate(parsed.data) == event
    assert stream_for_subject(event.subject()).name == "REGISTRY"
    with pytest.raises(ValidationError):
        Envelope.model_validate({**envelope.model_dump(), "unknown": 1})
