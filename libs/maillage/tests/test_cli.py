from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maillage.bootstrap import save_federation
from maillage.cli import app
from maillage.federation import build_federation, fixed_ports, load_territories

runner = CliRunner()


def test_a_busy_port_is_named_with_the_option_to_change_it(tmp_path: Path, referentiel: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]  # an ephemeral port, always below 65535 - 303
        result = runner.invoke(app, ["up", "--data-dir", str(tmp_path / "d"), "--base-port", str(port)])
    assert result.exit_code == 1
    assert f"{port} (gateway)" in result.output
    assert "--base-port" in result.output and "--ports auto" in result.output
    assert not (tmp_path / "d" / "federation.json").exists()


def test_auto_and_base_port_cannot_be_combined(tmp_path: Path, referentiel: Path) -> None:
    result = runner.invoke(app, ["up", "--data-dir", str(tmp_path), "--ports", "auto", "--base-port", "9000"])
    assert result.exit_code == 1
    assert "cannot be combined" in result.output


def test_missing_referentiel_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILLAGE_REFERENTIEL", str(tmp_path / "nope.json"))
    result = runner.invoke(app, ["up", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert "referentiel of territories not found" in result.output


def test_status_without_a_federation(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "maillage up" in result.output


def test_status_of_a_stopped_federation(tmp_path: Path, referentiel: Path) -> None:
    # Port 1 needs privileges nobody gives a test: nothing listens there.
    federation = build_federation(load_territories(referentiel), fixed_ports(1, 1))
    save_federation(tmp_path / "federation.json", federation)
    result = runner.invoke(app, ["status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "unreachable" in result.output
    assert "dijon-catalog" in result.output
