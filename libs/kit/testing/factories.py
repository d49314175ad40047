"""Plain factory functions for tests."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from contracts.events import TerritoryRegisteredV1
from kit.auth import AuthMethod, Keyring, KeyringEntry, Principal, issue_key
from kit.settings import ServiceSettings

__all__ = [
    "bootstrap_key",
    "operator_principal",
    "random_siren",
    "referentiel_path",
    "service_settings",
    "territory_event",
]

REPO_ROOT = Path(__file__).resolve().parents[3]


def referentiel_path() -> Path:
    """The EPCI referential of Bourgogne-Franche-Comté shipped in ``../shared`` beside the repository."""
    return REPO_ROOT.parent / "shared" / "data" / "referentiel" / "epci-bourgogne-franche-comte.json"


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def random_siren(rng: random.Random | None = None) -> str:
    """A random nine-digit SIREN with a valid Luhn key."""
    rng = rng or random.Random()
    body = [rng.randrange(10) for _ in range(8)]
    for check in range(10):
        digits = [*body, check]
        total = 0
        for position, value in enumerate(reversed(digits)):
            if position % 2 == 1:
                value *= 2
                if value > 9:
                    value -= 9
            total += value
        if total % 10 == 0:
            return "".join(map(str, digits))
    raise AssertionError("unreachable: one check digit always fits")


def territory_event(
    siren: str | None = None, *, name: str = "CC de test", population: int = 1000
) -> TerritoryRegisteredV1:
    """A valid ``registry.territory.registered`` event."""
    return TerritoryRegisteredV1(
        siren=siren or random_siren(), name=name, kind="CC", population=population, communes=["21231"]
    )


def service_settings(
    settings_cls: type[SettingsT],
    *,
    data_dir: Path,
    nats_url: str,
    database_url: str | None = None,
    **overrides: Any,
) -> SettingsT:
    """Settings of a service for a test: its own data dir, the test's NATS and database, environment ``test``."""
    return settings_cls(
        environment="test",
        secret_key=SecretStr("test-secret-" + "x" * 32),
        pseudonym_secret=SecretStr("test-pseudonym-secret-" + "x" * 32),
        data_dir=data_dir,
        nats_url=nats_url,
        database_url=database_url,
        outbox_poll_interval=0.2,
        **overrides,
    )


def bootstrap_key(keyring_file: Path, principal: Principal, *, kind: str = "adm") -> str:
    """Issue a key for ``principal``, add it to the keyring file (created when absent); returns the secret."""
    keyring = Keyring.load(keyring_file) if keyring_file.exists() else Keyring()
    issued = issue_key(kind)
    keyring.keys.append(
        KeyringEntry(
            lookup_prefix=issued.lookup_prefix,
            secret_hash=issued.secret_hash,
            kind=kind,
            label=principal.subject,
            principal=principal,
        )
    )
    keyring.save(keyring_file)
    return issued.secret


def operator_principal() -> Principal:
    """A federation operator (realm role ``operator``)."""
    return Principal(subject="test-operator", realm_roles=frozenset({"operator"}), auth_method=AuthMethod.BOOTSTRAP_KEY)
