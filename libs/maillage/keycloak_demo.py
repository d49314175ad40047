"""Keycloak in the demo federation (``maillage up --keycloak``, ``make demo KEYCLOAK=1``).

The test harness's :class:`~kit.testing.keycloak.KeycloakServer` prepares a Keycloak home (realm ``maillage`` of
``infra/keycloak/maillage-realm.json``, test users, a random administrator password) under ``<data dir>/keycloak``,
and the supervisor runs ``kc.sh start-dev`` like any other process: started with the registry, ready when the realm's
discovery document answers, restarted if it exits, stopped (its whole process group, the JVM included) on Ctrl-C.
Every service gets ``MAILLAGE_<SERVICE>_OIDC_ISSUER`` = the realm, so people and partners can use Keycloak tokens at
the gateway and at the services. Once everything is ready, ``maillage keycloak-sync`` runs once: the registry's
territories and admitted partners (the demo partner included) get their organisations and client.

The realm's state is not kept between runs: each `maillage up --keycloak` imports it afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

from kit.testing.keycloak import (
    PARTNER_CLIENT_ID,
    PARTNER_CLIENT_SECRET,
    TEST_CLIENT_ID,
    TEST_PASSWORD,
    KeycloakServer,
)
from maillage.bootstrap import BootstrapKey, DataDir
from maillage.federation import Federation
from maillage.keycloak_sync import KeycloakSync, SyncError, SyncReport, read_registry
from maillage.supervisor import ServiceSpec

__all__ = ["DEMO_USERS", "KEYCLOAK_PORT_OFFSET", "DemoKeycloak"]

# Keycloak listens on the gateway's port + 80: 8080 with the default plan.
KEYCLOAK_PORT_OFFSET = 80
DEMO_USERS = (
    ("steward-dijon", "steward of Dijon Métropole"),
    ("dpo-besancon", "DPO of Grand Besançon Métropole"),
    ("mixed", "analyst in Dijon, steward in Besançon"),
    ("operator", "regional operator (realm role operator)"),
)


@dataclass
class DemoKeycloak:
    server: KeycloakServer
    args: list[str]

    @classmethod
    def prepare(cls, data_dir: DataDir, port: int) -> DemoKeycloak:
        """Obtain Keycloak (``scripts/ensure-keycloak.sh``) and make its home; nothing runs yet."""
        server = KeycloakServer(base_dir=data_dir.root / "keycloak", port=port)
        return cls(server=server, args=server.prepare())

    @property
    def issuer(self) -> str:
        return self.server.issuer

    def spec(self, data_dir: DataDir) -> ServiceSpec:
        """Keycloak as a supervised process, started with the registry (wave 0)."""
        return ServiceSpec(
            name="keycloak",
            args=self.args,
            env=self.server.child_env(),
            log_file=data_dir.log_file("keycloak"),
            ready_url=self.server.discovery_url,
            wave=0,
        )

    def sync(self, federation: Federation, keys: list[BootstrapKey]) -> SyncReport | str:
        """``maillage keycloak-sync`` against the demo's registry; a problem as text when it fails."""
        admin = next((key for key in keys if key.role == "admin"), None)
        credentials = self.server.admin_credentials
        try:
            sync = KeycloakSync.connect(
                self.server.url, realm="maillage", username=credentials.username, password=credentials.password
            )
            return sync.sync(read_registry(federation.registry_url, admin.secret if admin else None))
        except SyncError as exc:
            return str(exc)

    def print_summary(self, console: Console, federation: Federation, report: SyncReport | str) -> None:
        kc = self.server
        credentials = kc.admin_credentials
        console.print(f"\nKeycloak {kc.url}   realm {kc.issuer}", soft_wrap=True, markup=False)
        console.print(
            f"  admin console {kc.url}/admin/  ({credentials.username} / {credentials.password}, this run only)",
            soft_wrap=True,
            markup=False,
        )
        console.print(f"  users (password {TEST_PASSWORD}, client {TEST_CLIENT_ID}, password grant):", markup=False)
        for username, what in DEMO_USERS:
            console.print(f"    {username:<14} {what}", markup=False)
        console.print(
            f"  partner client (client credentials): {PARTNER_CLIENT_ID} / {PARTNER_CLIENT_SECRET}", markup=False
        )
        if isinstance(report, str):
            console.print(f"[yellow]Keycloak not synchronised with the registry: {report}[/]", soft_wrap=True)
        else:
            created = len(report.created)
            console.print(
                f"  synchronised with the registry (maillage keycloak-sync): {created} created, "
                f"{len(report.changes) - created} kept",
                markup=False,
            )
            for client_id, secret in report.secrets.items():
                console.print(f"  new partner client {client_id} / {secret}", soft_wrap=True, markup=False)
        token = (
            f"curl -s -d grant_type=password -d client_id={TEST_CLIENT_ID} -d username=steward-dijon "
            f"-d password={TEST_PASSWORD} -d 'scope=openid organization:*' {kc.token_endpoint}"
        )
        console.print(
            f"\nToken: TOKEN=$({token} | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
            soft_wrap=True,
            markup=False,
        )
        console.print(
            f'       curl -H "Authorization: Bearer $TOKEN" {federation.gateway_url}/v1/whoami',
            soft_wrap=True,
            markup=False,
        )

    def cleanup(self) -> None:
        """Delete Keycloak's home once the supervisor has stopped it."""
        self.server.cleanup()
