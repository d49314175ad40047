"""`maillage keycloak-sync`: make the Keycloak realm match the registry (DESIGN.md §3), idempotently.

From the registry (``GET /v1/territories``, ``GET /v1/organisations``):

- every territory becomes a Keycloak **Organization** (alias = SIREN, attributes ``siren`` and ``kind=territory``)
  with the organisation groups ``steward``, ``dpo``, ``analyst``, ``admin``, each mapped to the client role of the
  same name of the API client (``maillage-api``), so that a user put in a group gets that role in that territory only;
- every admitted partner organisation becomes an Organization (alias = SIREN = the first nine digits of its SIRET,
  attributes ``siren``, ``siret``, ``kind=partner``) and gets a confidential **service-account client**
  ``partner-<SIRET>`` (client credentials only, audience ``maillage-api``, optional scope ``organization``) whose
  service-account user is a member of the organisation, so its tokens resolve to the partner (docs/GATEWAY.md).

What exists is kept, never changed or deleted; a second run creates nothing. A client secret is shown once, when the
client is created (or written to ``--secrets-file``), like the registry's API keys; it is never logged.

python-keycloak's :class:`~keycloak.KeycloakAdmin` wraps organisations, members and clients; organisation groups
and their role mappings have no wrapper, so they go through its connection as raw REST calls
(``/admin/realms/<realm>/organizations/<id>/groups[/<gid>/role-mappings/clients/<client>]``, Keycloak 26.6+).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import typer
from keycloak import KeycloakAdmin
from keycloak.exceptions import KeycloakError
from rich.console import Console
from rich.text import Text

__all__ = [
    "API_CLIENT_ID",
    "ORGANISATION_ROLES",
    "Change",
    "KeycloakSync",
    "PartnerOrganisation",
    "RegistryDirectory",
    "SyncError",
    "SyncReport",
    "TerritoryOrganisation",
    "keycloak_sync_command",
    "partner_client_id",
    "print_report",
    "read_registry",
    "write_secrets_file",
]

API_CLIENT_ID = "maillage-api"
ORGANISATION_ROLES = ("steward", "dpo", "analyst", "admin")
PARTNER_CLIENT_PREFIX = "partner-"
# The scopes of the realm's own partner client (infra/keycloak/maillage-realm.json, `mobilab-partner`).
PARTNER_DEFAULT_SCOPES = ["basic", "profile", "email", "roles", "web-origins", "acr", "service_account", API_CLIENT_ID]
PARTNER_OPTIONAL_SCOPES = ["organization", "offline_access"]

Action = Literal["created", "kept"]


class SyncError(Exception):
    """The registry or Keycloak could not be read or changed; the message says which and why (never a secret)."""


@dataclass(frozen=True)
class TerritoryOrganisation:
    siren: str
    name: str


@dataclass(frozen=True)
class PartnerOrganisation:
    siret: str
    name: str

    @property
    def siren(self) -> str:
        return self.siret[:9]


@dataclass(frozen=True)
class RegistryDirectory:
    territories: list[TerritoryOrganisation]
    partners: list[PartnerOrganisation]


@dataclass(frozen=True)
class Change:
    """One thing the sync looked at: ``kind`` (organisation, group, client, membership), what, and what it did."""

    kind: str
    name: str
    action: Action


@dataclass
class SyncReport:
    changes: list[Change] = field(default_factory=list)
    # client id -> secret, for the clients created by this run only.
    secrets: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, name: str, action: Action) -> None:
        self.changes.append(Change(kind, name, action))

    @property
    def created(self) -> list[Change]:
        return [change for change in self.changes if change.action == "created"]

    def __repr__(self) -> str:  # the secrets stay out of reprs, tracebacks and logs
        return f"SyncReport(changes={self.changes!r}, secrets=<{len(self.secrets)} hidden>)"


def partner_client_id(siret: str) -> str:
    """The Keycloak client of a partner organisation: ``partner-<SIRET>``."""
    return f"{PARTNER_CLIENT_PREFIX}{siret}"


def read_registry(registry_url: str, registry_key: str | None, *, timeout: float = 10.0) -> RegistryDirectory:
    """The territories and admitted partner organisations of the registry."""
    headers = {"Authorization": f"Bearer {registry_key}"} if registry_key else {}
    try:
        with httpx.Client(base_url=registry_url.rstrip("/"), timeout=timeout, trust_env=False) as client:
            territories = client.get("/v1/territories", headers=headers)
            organisations = client.get("/v1/organisations", headers=headers)
    except httpx.HTTPError as exc:
        raise SyncError(f"the registry at {registry_url} did not answer: {type(exc).__name__}") from exc
    for response in (territories, organisations):
        if response.status_code != 200:
            raise SyncError(
                f"the registry answered {response.status_code} to {response.request.url.path}: {response.text[:200]}"
            )
    return RegistryDirectory(
        territories=[TerritoryOrganisation(siren=t["siren"], name=t["name"]) for t in territories.json()],
        partners=[PartnerOrganisation(siret=o["siret"], name=o["name"]) for o in organisations.json()],
    )


class KeycloakSync:
    """Creates what the realm lacks for the registry's territories and partners; keeps what is there."""

    def __init__(self, admin: KeycloakAdmin) -> None:
        self.admin = admin
        self.realm = admin.connection.realm_name
        self._api_client: str | None = None
        self._api_roles: dict[str, dict[str, Any]] = {}

    @classmethod
    def connect(
        cls, server_url: str, *, realm: str, username: str, password: str, user_realm: str = "master"
    ) -> KeycloakSync:
        """Log in to the admin API as ``username`` of ``user_realm`` (``admin-cli``) and work on ``realm``."""
        admin = KeycloakAdmin(
            server_url=server_url.rstrip("/") + "/",
            username=username,
            password=password,
            realm_name=realm,
            user_realm_name=user_realm,
            client_id="admin-cli",
        )
        try:
            admin.connection.get_token()  # log in now, so that bad credentials are told apart from refused changes
        except KeycloakError as exc:
            raise SyncError(
                f"could not log in to Keycloak at {server_url} as {username} of realm {user_realm}: "
                f"{exc.response_code} {_error_text(exc)}"
            ) from exc
        return cls(admin)

    # -- the whole sync ------------------------------------------------------------------------------------------

    def sync(self, directory: RegistryDirectory) -> SyncReport:
        report = SyncReport()
        try:
            organisations = {o["alias"]: o for o in self.admin.get_organizations()}
            for territory in directory.territories:
                org_id = self._organisation(
                    organisations,
                    alias=territory.siren,
                    name=territory.name,
                    description=f"Territory {territory.name}, SIREN {territory.siren}",
                    attributes={"siren": [territory.siren], "kind": ["territory"]},
                    report=report,
                )
                self._role_groups(org_id, territory.siren, report)
            for partner in directory.partners:
                org_id = self._organisation(
                    organisations,
                    alias=partner.siren,
                    name=partner.name,
                    description=f"Partner organisation {partner.name}, SIRET {partner.siret}",
                    attributes={"siren": [partner.siren], "siret": [partner.siret], "kind": ["partner"]},
                    report=report,
                )
                self._partner_client(org_id, partner, report)
        except KeycloakError as exc:
            raise SyncError(f"Keycloak refused a change: {exc.response_code} {_error_text(exc)}") from exc
        return report

    # -- organisations -------------------------------------------------------------------------------------------

    def _organisation(
        self,
        known: dict[str, dict[str, Any]],
        *,
        alias: str,
        name: str,
        description: str,
        attributes: dict[str, list[str]],
        report: SyncReport,
    ) -> str:
        existing = known.get(alias)
        if existing is not None:
            report.add("organisation", f"{alias} {existing.get('name', name)}", "kept")
            return str(existing["id"])
        payload = {
            "alias": alias,
            "name": self._free_name(known, name, alias),
            "description": description,
            "enabled": True,
            "attributes": attributes,
        }
        org_id = self.admin.create_organization(payload)
        if org_id is None:  # no Location header: look it up
            org_id = next(o["id"] for o in self.admin.get_organizations() if o["alias"] == alias)
        known[alias] = {**payload, "id": org_id}
        report.add("organisation", f"{alias} {payload['name']}", "created")
        return str(org_id)

    @staticmethod
    def _free_name(known: dict[str, dict[str, Any]], name: str, alias: str) -> str:
        # Organisation names are unique in a realm; two organisations may share a name in the registry.
        taken = {o.get("name") for o in known.values()}
        return name if name not in taken else f"{name} ({alias})"

    def _org_path(self, org_id: str) -> str:
        return f"admin/realms/{self.realm}/organizations/{org_id}"

    def _role_groups(self, org_id: str, siren: str, report: SyncReport) -> None:
        """The groups ``steward``, ``dpo``, ``analyst``, ``admin`` of a territory, each with its API client role."""
        groups = {g["name"]: g for g in self._get(f"{self._org_path(org_id)}/groups")}
        api = self._api_client_uuid()
        for role in ORGANISATION_ROLES:
            group = groups.get(role)
            if group is None:
                response = self.admin.connection.raw_post(
                    f"{self._org_path(org_id)}/groups", data=json.dumps({"name": role})
                )
                _expect(response, 201, f"create group {role} of organisation {siren}")
                group = response.json()
                action: Action = "created"
            else:
                action = "kept"
            mapping_path = f"{self._org_path(org_id)}/groups/{group['id']}/role-mappings/clients/{api}"
            mapped = {r["name"] for r in self._get(mapping_path)}
            if role not in mapped:
                response = self.admin.connection.raw_post(mapping_path, data=json.dumps([self._api_role(role)]))
                _expect(response, 204, f"map role {role} to group {role} of organisation {siren}")
                action = "created"
            report.add("group", f"{siren} /{role} → {API_CLIENT_ID} {role}", action)

    def _api_client_uuid(self) -> str:
        if self._api_client is None:
            uuid = self.admin.get_client_id(API_CLIENT_ID)
            if uuid is None:
                raise SyncError(f"the realm {self.realm} has no client {API_CLIENT_ID} (import the maillage realm)")
            self._api_client = uuid
        return self._api_client

    def _api_role(self, role: str) -> dict[str, Any]:
        if role not in self._api_roles:
            self._api_roles[role] = self.admin.get_client_role(self._api_client_uuid(), role)
        return self._api_roles[role]

    # -- partner clients -----------------------------------------------------------------------------------------

    def _partner_client(self, org_id: str, partner: PartnerOrganisation, report: SyncReport) -> None:
        client_id = partner_client_id(partner.siret)
        uuid = self.admin.get_client_id(client_id)
        if uuid is None:
            uuid = self.admin.create_client(
                {
                    "clientId": client_id,
                    "name": f"{partner.name} (partner)",
                    "description": f"Service account of the partner {partner.name}, SIRET {partner.siret}",
                    "enabled": True,
                    "protocol": "openid-connect",
                    "publicClient": False,
                    "clientAuthenticatorType": "client-secret",
                    "serviceAccountsEnabled": True,
                    "standardFlowEnabled": False,
                    "implicitFlowEnabled": False,
                    "directAccessGrantsEnabled": False,
                    "fullScopeAllowed": False,
                    "attributes": {"maillage.siret": partner.siret},
                    "defaultClientScopes": PARTNER_DEFAULT_SCOPES,
                    "optionalClientScopes": PARTNER_OPTIONAL_SCOPES,
                }
            )
            secret = self.admin.get_client_secrets(uuid).get("value")
            if not isinstance(secret, str):
                raise SyncError(f"Keycloak gave no secret for the new client {client_id}")
            report.secrets[client_id] = secret
            report.add("client", client_id, "created")
        else:
            report.add("client", client_id, "kept")
        account = self.admin.get_client_service_account_user(uuid)
        members = {m["id"] for m in self.admin.get_organization_members(org_id)}
        if account["id"] in members:
            report.add("membership", f"{account['username']} ∈ {partner.siren}", "kept")
        else:
            self.admin.organization_user_add(account["id"], org_id)
            report.add("membership", f"{account['username']} ∈ {partner.siren}", "created")

    # -- raw REST ------------------------------------------------------------------------------------------------

    def _get(self, path: str) -> list[dict[str, Any]]:
        response = self.admin.connection.raw_get(path)
        _expect(response, 200, f"read {path.rsplit('/', 1)[-1]}")
        value = response.json()
        if not isinstance(value, list):
            raise SyncError(f"unexpected answer from Keycloak for {path}")
        return value


def _expect(response: Any, status: int, what: str) -> None:
    if response.status_code != status:
        raise SyncError(f"Keycloak refused to {what}: {response.status_code} {response.text[:200]}")


def _error_text(exc: KeycloakError) -> str:
    body = exc.response_body
    if isinstance(body, bytes):
        return body.decode("utf-8", errors="replace")[:200]
    return str(exc.error_message)[:200]


def write_secrets_file(path: Path, secrets: dict[str, str]) -> None:
    """Add ``client_id secret`` lines to ``path`` (created 0600; lines of other clients are kept)."""
    lines: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            client_id, _, secret = line.strip().partition(" ")
            if client_id and secret and not client_id.startswith("#"):
                lines[client_id] = secret
    lines.update(secrets)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("# Keycloak client secrets written by `maillage keycloak-sync`: client_id secret\n")
        handle.writelines(f"{client_id} {secret}\n" for client_id, secret in sorted(lines.items()))
    tmp.replace(path)


def print_report(console: Console, report: SyncReport, secrets_file: Path | None) -> None:
    for change in report.changes:
        style = "green" if change.action == "created" else "dim"
        console.print(Text.assemble((f"{change.action:<8}", style), f" {change.kind:<12} {change.name}"))
    created = len(report.created)
    console.print(f"{created} created, {len(report.changes) - created} kept.")
    if not report.secrets:
        return
    if secrets_file is not None:
        console.print(f"Secrets of the {len(report.secrets)} new client(s) written to {secrets_file} (mode 0600).")
        return
    console.print("\nSecrets of the new clients, shown once (Keycloak can regenerate them, not show them again here):")
    for client_id, secret in report.secrets.items():
        console.print(f"  {client_id} {secret}", soft_wrap=True, markup=False, highlight=False)


def keycloak_sync_command(
    keycloak_url: Annotated[
        str, typer.Option(envvar="MAILLAGE_KEYCLOAK_URL", help="Keycloak's base URL, e.g. http://127.0.0.1:8080.")
    ],
    admin_password: Annotated[
        str,
        typer.Option(
            envvar="MAILLAGE_KEYCLOAK_ADMIN_PASSWORD",
            help="Password of the Keycloak administrator (better passed in the environment).",
            show_default=False,
        ),
    ],
    registry_url: Annotated[
        str, typer.Option(envvar="MAILLAGE_REGISTRY_URL", help="The registry whose organisations to mirror.")
    ] = "http://127.0.0.1:8001",
    registry_key: Annotated[
        str | None,
        typer.Option(envvar="MAILLAGE_OPERATOR_KEY", help="An operator key of the registry.", show_default=False),
    ] = None,
    realm: Annotated[str, typer.Option(help="The realm to change.")] = "maillage",
    admin_username: Annotated[
        str, typer.Option(envvar="MAILLAGE_KEYCLOAK_ADMIN", help="The Keycloak administrator.")
    ] = "admin",
    admin_realm: Annotated[str, typer.Option(help="The administrator's realm.")] = "master",
    secrets_file: Annotated[
        Path | None,
        typer.Option(help="Write the secrets of new clients to this file (0600) instead of printing them."),
    ] = None,
) -> None:
    """Make Keycloak match the registry: an organisation per territory and per admitted partner, and a
    client-credentials client per partner, member of its organisation. Idempotent; secrets are shown once."""
    console = Console(log_path=False, highlight=False)
    try:
        directory = read_registry(registry_url, registry_key)
        sync = KeycloakSync.connect(keycloak_url, realm=realm, username=admin_username, password=admin_password)
        report = sync.sync(directory)
    except KeycloakError as exc:
        # Typically a failed administrator login: say so without echoing what was sent.
        console.print(Text.assemble(("Error: ", "bold red"), f"Keycloak: {exc.response_code} {_error_text(exc)}"))
        raise typer.Exit(1) from None
    except SyncError as exc:
        console.print(Text.assemble(("Error: ", "bold red"), str(exc)), soft_wrap=True)
        raise typer.Exit(1) from None
    if secrets_file is not None and report.secrets:
        write_secrets_file(secrets_file, report.secrets)
    print_report(console, report, secrets_file)
