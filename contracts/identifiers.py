"""Validated identifiers: the only values allowed as NATS subject tokens, dataset ids and URL segments."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

__all__ = [
    "NodeId",
    "Siren",
    "Siret",
    "Slug",
    "SubjectTokenError",
    "validate_node_id",
    "validate_siren",
    "validate_siret",
    "validate_slug",
]

_SLUG_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_SLUG_MAX = 64


class SubjectTokenError(ValueError):
    """A value cannot be used as an identifier or a subject token."""


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def validate_siren(value: str) -> str:
    """A SIREN: exactly nine ASCII digits with a valid Luhn key (as INSEE assigns them)."""
    if not isinstance(value, str) or len(value) != 9 or not value.isascii() or not value.isdigit():
        raise SubjectTokenError(f"SIREN must be nine digits, got {value!r}")
    if not _luhn_ok(value):
        raise SubjectTokenError(f"SIREN {value} fails its Luhn check")
    return value


def validate_siret(value: str) -> str:
    """A SIRET: fourteen ASCII digits whose first nine are a valid SIREN."""
    if not isinstance(value, str) or len(value) != 14 or not value.isascii() or not value.isdigit():
        raise SubjectTokenError(f"SIRET must be fourteen digits, got {value!r}")
    validate_siren(value[:9])
    return value


def validate_slug(value: str) -> str:
    """A slug: lowercase ASCII letters and digits in words joined by single hyphens, at most 64 characters."""
    if not isinstance(value, str) or len(value) > _SLUG_MAX or _SLUG_RE.fullmatch(value) is None:
        raise SubjectTokenError(f"slug must match [a-z0-9]+(-[a-z0-9]+)* and be at most {_SLUG_MAX} characters")
    return value


def validate_node_id(value: str) -> str:
    """A node id is a slug."""
    return validate_slug(value)


Siren = Annotated[str, AfterValidator(validate_siren)]
Siret = Annotated[str, AfterValidator(validate_siret)]
Slug = Annotated[str, AfterValidator(validate_slug)]
NodeId = Annotated[str, AfterValidator(validate_node_id)]
