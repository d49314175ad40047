"""Fixtures of the `maillage` CLI tests: a small referentiel, and `maillage up` run as a real subprocess."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from maillage.testing import UpProcess, launch_up

FAKE_SERVICE = Path(__file__).with_name("fake_service.py")

REFERENTIEL = [
    {
        "siren": "242100410",
        "nom": "Dijon Métropole",
        "type": "METRO",
        "populationTotale": 263672,
        "communes": [{"insee": "21231", "siren": "212102313", "nom": "Dijon", "population": 159941}],
    },
    {
        "siren": "242500361",
        "nom": "CU Grand Besançon Métropole",
        "type": "CU",
        "populationTotale": 203293,
        "communes": [{"insee": "25056", "siren": "212500565", "nom": "Besançon", "population": 120057}],
    },
    {
        "siren": "200069540",
        "nom": "CC Norge et Tille",
        "type": "CC",
        "populationTotale": 16955,
        "communes": [{"insee": "21021", "siren": "212100218", "nom": "Arc-sur-Tille", "population": 2590}],
    },
    {
        "siren": "200068070",
        "nom": "CC Loue-Lison",
        "type": "CC",
        "populationTotale": 25811,
        "communes": [{"insee": "25434", "siren": "200055903", "nom": "Ornans", "population": 4421}],
    },
    {"siren": "200000000", "nom": "CC Ailleurs", "type": "CC", "populationTotale": 1, "communes": []},
]


@pytest.fixture
def referentiel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A referentiel file holding the four demo territories (and one more), set as $MAILLAGE_REFERENTIEL."""
    path = tmp_path / "referentiel.json"
    path.write_text(json.dumps(REFERENTIEL, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setenv("MAILLAGE_REFERENTIEL", str(path))
    return path


@pytest.fixture
def run_up(tmp_path: Path, referentiel: Path) -> Iterator[Callable[..., UpProcess]]:
    """Start `maillage up --ports auto` with fake services; kills whatever is left at the end of the test."""
    started: list[UpProcess] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        data_dir: Path | None = None,
        auto_ports: bool = True,
    ) -> UpProcess:
        data_dir = data_dir or tmp_path / f"data-{len(started)}"
        output_file = tmp_path / f"up-{len(started)}.out"
        ports = ["--ports", "auto"] if auto_ports else []
        full_env = {
            "MAILLAGE_REFERENTIEL": str(referentiel),
            "MAILLAGE_SERVICE_COMMAND_OVERRIDE": json.dumps(command or [sys.executable, str(FAKE_SERVICE)]),
            **(env or {}),
        }
        up = launch_up([*ports, *args], data_dir=data_dir, output_file=output_file, env=full_env)
        started.append(up)
        return up

    yield start
    for up in started:
        up.kill_tree()
