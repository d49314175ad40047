"""Settings: one prefix per service, placeholder secrets refused outside development."""

from __future__ import annotations

from typing import ClassVar

import pytest
from pydantic import ValidationError

from kit.settings import ServiceSettings, service_config


class DemoSettings(ServiceSettings):
    model_config = service_config("DEMO")


class PseudonymisingSettings(ServiceSettings):
    model_config = service_config("DEMO")
    uses_pseudonyms: ClassVar[bool] = True


def test_environment_prefix_and_territory_list(monkeypatch, tmp_path):
    monkeypatch.setenv("MAILLAGE_DEMO_PORT", "9123")
    monkeypatch.setenv("MAILLAGE_DEMO_TERRITORIES", "200069540, 200068070")
    monkeypatch.setenv("MAILLAGE_DEMO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MAILLAGE_OTHER_PORT", "1")
    settings = DemoSettings()
    assert settings.port == 9123
    assert settings.territories == ["200069540", "200068070"]
    assert settings.resolved_database_url("demo") == f"sqlite:///{tmp_path.resolve()}/demo.db"


def test_placeholder_secret_accepted_in_development_only(monkeypatch):
    assert DemoSettings(environment="development").secret_key.get_secret_value() == "changethis"
    for environment in ("test", "production"):
        with pytest.raises(ValidationError, match="placeholder"):
            DemoSettings(environment=environment)
        with pytest.raises(ValidationError, match="at least 32"):
            DemoSettings(environment=environment, secret_key="short-but-not-placeholder")
    # Services that pseudonymise subjects need the node's pseudonymisation secret too; others do not.
    with pytest.raises(ValidationError, match="MAILLAGE_PSEUDONYM_SECRET"):
        PseudonymisingSettings(environment="production", secret_key="s" * 40)
    strong = PseudonymisingSettings(environment="production", secret_key="s" * 40, pseudonym_secret="p" * 40)
    assert strong.environment == "production"
    monkeypatch.setenv("MAILLAGE_PSEUDONYM_SECRET", "q" * 40)  # one variable for every service of the node
    shared = PseudonymisingSettings(environment="production", secret_key="s" * 40)
    assert shared.pseudonym_secret.get_secret_value() == "q" * 40


def test_secret_never_printed():
    settings = DemoSettings(secret_key="super-secret-value-that-must-not-leak")
    assert "super-secret" not in repr(settings)
    assert "super-secret" not in str(settings.model_dump())


@pytest.mark.parametrize("value", ["24210041*", "../x", "242100411"])
def test_bad_territories_refused(monkeypatch, value):
    monkeypatch.setenv("MAILLAGE_DEMO_TERRITORIES", value)
    with pytest.raises(ValidationError):
        DemoSettings()
