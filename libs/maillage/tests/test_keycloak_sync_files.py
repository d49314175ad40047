"""The parts of `maillage keycloak-sync` that hold secrets: the secrets file and the report."""

from __future__ import annotations

import stat
from pathlib import Path

from maillage.keycloak_sync import PartnerOrganisation, SyncReport, partner_client_id, write_secrets_file


def test_secrets_file_is_private_and_keeps_other_clients(tmp_path: Path) -> None:
    path = tmp_path / "partners.secrets"
    write_secrets_file(path, {"partner-55210055400013": "first"})
    write_secrets_file(path, {"partner-44306184100047": "second"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    assert lines == ["partner-44306184100047 second", "partner-55210055400013 first"]


def test_the_report_never_shows_secrets() -> None:
    report = SyncReport()
    report.add("client", "partner-55210055400013", "created")
    report.secrets["partner-55210055400013"] = "s3cr3t-value"
    assert "s3cr3t-value" not in repr(report) and "1 hidden" in repr(report)
    assert [change.name for change in report.created] == ["partner-55210055400013"]


def test_partner_names() -> None:
    partner = PartnerOrganisation(siret="55210055400013", name="Transports Comtois SA")
    assert partner.siren == "552100554"
    assert partner_client_id(partner.siret) == "partner-55210055400013"
