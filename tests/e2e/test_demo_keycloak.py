"""`maillage up --keycloak` (`make demo KEYCLOAK=1`) with the real services and a real Keycloak: Keycloak is
supervised with the federation, every service accepts its tokens, the registry's partners are synchronised into the
realm, and Ctrl-C stops everything, the JVM included."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from kit.testing.keycloak import TEST_CLIENT_ID, TEST_PASSWORD
from maillage.federation import service_instances
from maillage.testing import UpProcess, launch_up

pytestmark = pytest.mark.integration

DIJON, BESANCON = "242100410", "242500361"
PARTNER = "73282932000074"


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[UpProcess]:
    up = launch_up(
        ["--ports", "auto", "--keycloak"],
        data_dir=tmp_path / "data",
        output_file=tmp_path / "up.out",
        env={"COLUMNS": "200"},
    )
    yield up
    up.kill_tree()


def test_demo_with_keycloak(demo: UpProcess) -> None:
    demo.wait_ready(timeout=180)
    eventually(lambda: "Token: TOKEN=" in demo.output(), "the Keycloak summary", 120)
    output = demo.output()
    found = re.search(r"^Keycloak (http://127\.0\.0\.1:\d+) ", output, re.M)
    assert found, output
    keycloak = found.group(1)
    assert "steward-dijon" in output and "mobilab-partner" in output
    secret = re.search(rf"new partner client partner-{PARTNER} / (\S+)", output)
    assert secret, output
    instances = {i.name: i for i in service_instances(demo.federation())}

    with httpx.Client(timeout=30, trust_env=False) as client:
        token_url = f"{keycloak}/realms/maillage/protocol/openid-connect/token"
        token = client.post(
            token_url,
            data={
                "grant_type": "password",
                "client_id": TEST_CLIENT_ID,
                "username": "mixed",
                "password": TEST_PASSWORD,
                "scope": "openid organization:*",
            },
        ).json()["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}
        # The gateway and the services themselves accept the realm's tokens (MAILLAGE_*_OIDC_ISSUER).
        for url in (instances["gateway"].url, instances["dijon-catalog"].url, instances["registry"].url):
            who = client.get(f"{url}/v1/whoami", headers=bearer)
            assert who.status_code == 200, (url, who.text)
            assert who.json()["territory_roles"] == {DIJON: ["analyst"], BESANCON: ["steward"]}
        # The partner client created by keycloak-sync speaks for the demo partner at the gateway.
        partner = client.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": f"partner-{PARTNER}",
                "client_secret": secret.group(1),
                "scope": "organization:*",
            },
        ).json()["access_token"]
        who = client.get(f"{instances['gateway'].url}/v1/whoami", headers={"Authorization": f"Bearer {partner}"})
        assert who.status_code == 200 and who.json()["organisation"] == PARTNER, who.text

    pids = demo.descendants()
    assert demo.interrupt(timeout=60) == 0
    eventually(lambda: not UpProcess.survivors(pids), "every child to be gone", 30)
    assert not demo.processes_using_data_dir()  # the JVM runs with -Dkc.home.dir under the data dir
    assert not list((demo.data_dir / "keycloak").glob("maillage-kc-*"))
