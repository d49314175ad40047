"""`maillage up` as a real subprocess: real nats-server, fake services (see fake_service.py)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from maillage.cli import app
from maillage.federation import service_instances

pytestmark = pytest.mark.integration

# The `run_up` fixture of conftest.py: starts `maillage up` and returns its UpProcess.
StartUp = Callable[..., Any]


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _readyz(url: str) -> httpx.Response | None:
    try:
        return httpx.get(f"{url}/readyz", timeout=1.0, trust_env=False)
    except httpx.HTTPError:
        return None


def _nats_pid(pids: set[int]) -> int:
    for pid in pids:
        if b"nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError("no nats-server among the children")


def test_up_supervises_restarts_and_stops_without_orphans(run_up: StartUp) -> None:
    up = run_up()
    answers = up.wait_ready()
    federation = up.federation()
    assert set(answers) == {instance.name for instance in service_instances(federation)}

    # Every service received its part of the environment contract.
    dijon = answers["dijon-catalog"]["settings"]
    assert dijon["NODE_ID"] == "dijon"
    assert dijon["TERRITORIES"] == "242100410"
    assert dijon["NATS_URL"] == federation.nats_url
    assert dijon["ENVIRONMENT"] == "development"
    assert Path(dijon["KEYRING_FILE"]).exists()
    assert Path(dijon["DATA_DIR"]).is_dir()
    assert answers["registry"]["settings"]["FEDERATION_FILE"] == str(up.data_dir / "federation.json")
    assert answers["gateway"]["settings"]["REGISTRY_URL"] == federation.registry_url
    assert answers["operateur-consent"]["settings"]["TERRITORIES"] == "200069540,200068070"

    result = CliRunner().invoke(app, ["status", "--data-dir", str(up.data_dir)])
    assert result.exit_code == 0, result.output

    _wait_for(lambda: "Ctrl-C stops everything" in up.output(), 10, "the ready summary")
    output = up.output()
    assert "Dijon Métropole" in output and "CC Loue-Lison" in output
    assert "mlg_adm_" in output and "/v1/whoami" in output

    # A service that dies is restarted.
    victim_url = federation.nodes[1].urls.exchange
    victim_pid = answers["besancon-exchange"]["pid"]
    assert isinstance(victim_pid, int)
    os.kill(victim_pid, signal.SIGKILL)

    def restarted() -> bool:
        response = _readyz(victim_url)
        return response is not None and response.status_code == 200 and response.json()["pid"] != victim_pid

    _wait_for(restarted, 15, "besancon-exchange to be restarted")
    assert "besancon-exchange exited on SIGKILL" in up.output()

    # So is nats-server, on the same port.
    old_nats = _nats_pid(up.descendants())
    os.kill(old_nats, signal.SIGKILL)
    _wait_for(lambda: "nats-server restarted" in up.output(), 15, "nats-server to be restarted")
    nats_port = int(federation.nats_url.rpartition(":")[2])
    socket.create_connection(("127.0.0.1", nats_port), timeout=2).close()

    children = up.descendants()
    assert len(children) >= 12  # nats-server and eleven services
    assert up.interrupt() == 0
    assert up.survivors(children) == set()
    assert up.processes_using_data_dir() == set()
    assert "Stopped 11 service(s) and nats-server" in up.output()


def test_a_second_ctrl_c_kills_services_that_ignore_sigterm(run_up: StartUp) -> None:
    up = run_up(env={"FAKE_SERVICE_IGNORE_SIGTERM": "1"})
    up.wait_ready()
    children = up.descendants()
    began = time.monotonic()
    up.proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert up.proc.poll() is None  # still waiting for the deaf services
    assert up.interrupt(timeout=9) == 0
    assert time.monotonic() - began < 10  # did not sit out the whole grace period
    assert up.survivors(children) == set()
    assert up.processes_using_data_dir() == set()


def test_a_service_that_cannot_start_fails_up_with_its_log(run_up: StartUp) -> None:
    up = run_up(command=[sys.executable, "-c", "import sys; print('boom: no database'); sys.exit(3)"])
    assert up.proc.wait(timeout=60) == 1
    output = up.output()
    assert "registry exited with code 3 before it was ready" in output
    assert "boom: no database" in output
    assert up.processes_using_data_dir() == set()


def test_a_service_command_that_does_not_exist_fails_up(run_up: StartUp, tmp_path: Path) -> None:
    up = run_up(command=[str(tmp_path / "no-such-program")])
    assert up.proc.wait(timeout=60) == 1
    assert "registry could not be started" in up.output()
    assert up.processes_using_data_dir() == set()


def test_a_service_never_ready_times_out(run_up: StartUp) -> None:
    up = run_up("--ready-timeout", "2", env={"FAKE_SERVICE_NEVER_READY": "1"})
    assert up.proc.wait(timeout=60) == 1
    output = up.output()
    assert "registry not ready after 2 s" in output
    assert "503" in output and "degraded" in output
    assert up.processes_using_data_dir() == set()


def test_a_second_up_resumes_with_the_same_keys_and_ports(run_up: StartUp) -> None:
    first = run_up()
    first.wait_ready()
    keys = (first.data_dir / "keys.txt").read_text()
    saved = (first.data_dir / "federation.json").read_text()
    assert first.interrupt() == 0

    second = run_up(data_dir=first.data_dir, auto_ports=False)
    second.wait_ready()
    assert (first.data_dir / "keys.txt").read_text() == keys
    assert (first.data_dir / "federation.json").read_text() == saved
    _wait_for(lambda: "Ctrl-C stops everything" in second.output(), 10, "the ready summary")
    assert "Resuming" in second.output() and "reused" in second.output()

    # A concurrent `up` on the same data dir is refused before it touches anything.
    third = run_up(data_dir=first.data_dir)
    assert third.proc.wait(timeout=30) == 1
    assert "already running" in third.output()
    assert second.interrupt() == 0
