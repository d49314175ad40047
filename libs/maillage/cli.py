"""The `maillage` command: run a demo federation of real territories on this machine, and check on it."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kit.nats_server import NatsServer
from kit.process import free_port
from kit.testing.keycloak import KeycloakServerError
from maillage.archive_cli import export_command, import_command
from maillage.bootstrap import (
    BootstrapKey,
    DataDir,
    DataDirError,
    ensure_assertion_key,
    ensure_service_credential,
    load_federation,
    load_or_issue_keys,
    locked,
    save_federation,
)
from maillage.demo_data import ingest_demo_data
from maillage.federation import (
    DEFAULT_BASE_PORT,
    DEFAULT_NATS_PORT,
    HOST,
    Federation,
    ReferentielError,
    ServiceInstance,
    build_federation,
    default_referentiel_path,
    instance_names,
    load_territories,
    plan_ports,
    service_instances,
)
from maillage.ingest_cli import ingest as ingest_command
from maillage.keycloak_demo import KEYCLOAK_PORT_OFFSET, DemoKeycloak
from maillage.keycloak_sync import keycloak_sync_command
from maillage.partner import DEMO_PARTNER_NAME, ensure_demo_partner
from maillage.supervisor import Supervisor, service_specs

__all__ = ["app", "main"]

app = typer.Typer(
    help="Maillage: a federated data mesh for French territories, run locally.",
    no_args_is_help=True,
    add_completion=False,
)

# The highest port a node service gets is base + 303.
_MAX_BASE_PORT = 65535 - 303


class PortMode(StrEnum):
    fixed = "fixed"
    auto = "auto"


DataDirOption = Annotated[Path, typer.Option("--data-dir", help="Where the federation keeps its state.")]


def _console() -> Console:
    return Console(log_path=False, highlight=False)


def _fail(console: Console, message: str, code: int = 1) -> typer.Exit:
    console.print(Text.assemble(("Error: ", "bold red"), message), soft_wrap=True)
    return typer.Exit(code)


@app.command()
def up(
    data_dir: DataDirOption = Path(".maillage"),
    base_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=_MAX_BASE_PORT,
            help=f"Gateway port; registry gets +1, nodes +101..+303. Default {DEFAULT_BASE_PORT}, or the saved ports.",
        ),
    ] = None,
    nats_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help=f"nats-server port. Default {DEFAULT_NATS_PORT}, or the saved port."),
    ] = None,
    ports: Annotated[
        PortMode | None,
        typer.Option(
            help="fixed: the default plan (8000.., 4222) even on resume; auto: any free ports (tests, parallel runs)."
        ),
    ] = None,
    ready_timeout: Annotated[float, typer.Option(min=1.0, help="Seconds each process has to become ready.")] = 60.0,
    keycloak: Annotated[
        bool,
        typer.Option(
            "--keycloak",
            help="Also run Keycloak (realm maillage, test users) and make every service accept its tokens.",
        ),
    ] = False,
    keycloak_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help=f"Keycloak's port. Default: the gateway's + {KEYCLOAK_PORT_OFFSET}."),
    ] = None,
) -> None:
    """Start nats-server, the registry, the gateway and three nodes for four real territories; Ctrl-C stops all."""
    console = _console()
    root = DataDir(data_dir.expanduser().resolve())
    try:
        saved = load_federation(root.federation_file)
        territories = saved.territories if saved is not None else load_territories(default_referentiel_path())
        mode: Literal["fixed", "auto"] | None = None if ports is None else ports.value
        port_map = plan_ports(saved, mode=mode, base_port=base_port, nats_port=nats_port)
        federation = build_federation(territories, port_map)
    except (DataDirError, ReferentielError, ValueError) as exc:
        raise _fail(console, str(exc)) from None

    try:
        with locked(root):
            if keycloak:
                kc_port = keycloak_port or (
                    free_port() if mode == "auto" else port_map["gateway"] + KEYCLOAK_PORT_OFFSET
                )
                busy = _busy_ports({**port_map, "keycloak": kc_port})
            else:
                busy = _busy_ports(port_map)
            if busy:
                listed = ", ".join(f"{port} ({name})" for name, port in busy)
                raise _fail(
                    console,
                    f"port(s) already in use: {listed}. Stop what listens there, or choose other ports with "
                    "--base-port N (services), --nats-port N (nats-server), or --ports auto.",
                )
            root.prepare(instance_names())
            if saved != federation:
                save_federation(root.federation_file, federation)
            keys, issued = load_or_issue_keys(root, [territory.siren for territory in federation.territories])
            if saved is not None:
                console.print(f"Resuming the federation saved in {root.root}.")
            nats = NatsServer(store_dir=root.nats_store, port=port_map["nats"], log_file=root.log_file("nats"))
            credential = ensure_service_credential(root)
            demo_keycloak: DemoKeycloak | None = None
            if keycloak:
                try:
                    with console.status("Preparing Keycloak (scripts/ensure-keycloak.sh)..."):
                        demo_keycloak = DemoKeycloak.prepare(root, kc_port)
                except KeycloakServerError as exc:
                    raise _fail(console, f"Keycloak could not be prepared: {exc}") from None
            specs = service_specs(
                federation,
                root,
                service_credential=credential,
                oidc_issuer=demo_keycloak.issuer if demo_keycloak is not None else None,
                assertion_key=ensure_assertion_key(root),
            )
            if demo_keycloak is not None:
                specs.insert(0, demo_keycloak.spec(root))
            supervisor = Supervisor(
                specs,
                nats,
                console,
                ready_timeout=ready_timeout,
                data_dir=root,
            )

            def on_ready() -> None:
                problem = ensure_demo_partner(federation, root, keys)
                if problem is not None:
                    console.print(f"[yellow]Demo partner not set up: {problem}[/]", soft_wrap=True)
                with console.status("Loading the demo data into the exchanges..."):
                    for problem in ingest_demo_data(federation, keys):
                        console.print(f"[yellow]Demo data not loaded: {problem}[/]", soft_wrap=True)
                _print_federation(console, federation, root, keys, issued)
                if demo_keycloak is not None:
                    with console.status("Synchronising Keycloak with the registry..."):
                        report = demo_keycloak.sync(federation, keys)
                    demo_keycloak.print_summary(console, federation, report)

            try:
                code = supervisor.run(on_ready=on_ready)
            finally:
                if demo_keycloak is not None:
                    demo_keycloak.cleanup()
    except DataDirError as exc:
        raise _fail(console, str(exc)) from None
    raise typer.Exit(code)


@app.command()
def status(data_dir: DataDirOption = Path(".maillage")) -> None:
    """Show whether every process of the federation in the data dir answers ready; exit 1 if one does not."""
    console = _console()
    root = DataDir(data_dir.expanduser().resolve())
    try:
        federation = load_federation(root.federation_file)
    except DataDirError as exc:
        raise _fail(console, str(exc)) from None
    if federation is None:
        raise _fail(console, f"no federation in {root.root}: start one with `maillage up --data-dir {data_dir}`")

    table = Table(title=f"Federation in {root.root}")
    table.add_column("process", no_wrap=True)
    table.add_column("territories")
    table.add_column("url", no_wrap=True, min_width=_url_width(federation))
    table.add_column("status")
    all_ready = True
    nats_up = _accepts_connections(federation.nats_url)
    all_ready &= nats_up
    table.add_row("nats", "", federation.nats_url, "[green]up[/]" if nats_up else "[red]unreachable[/]")
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        for instance in service_instances(federation):
            ready, answer = _readiness(client, instance.url)
            all_ready &= ready
            shown = f"[green]{answer}[/]" if ready else f"[red]{answer}[/]"
            table.add_row(instance.name, _territory_names(federation, instance), instance.url, shown)
    console.print(table)
    if not all_ready:
        raise typer.Exit(1)


@app.command()
def contracts(
    check: Annotated[
        bool, typer.Option("--check", help="Fail when the committed documents differ from the code.")
    ] = False,
) -> None:
    """Generate contracts/asyncapi.yaml, JSON Schemas and OpenAPI documents from the code."""
    from maillage import contracts_gen

    console = _console()
    if check:
        problems = contracts_gen.check()
        for problem in problems:
            console.print(f"[red]✘[/] {problem}")
        if problems:
            raise typer.Exit(1)
        console.print("[green]✔[/] contracts are up to date")
        return
    written = contracts_gen.write()
    for path in written:
        console.print(f"wrote {path.relative_to(contracts_gen.CONTRACTS_DIR.parent)}")
    console.print(f"[green]✔[/] contracts up to date ({len(written)} file(s) changed)")


app.command("ingest")(ingest_command)
app.command("export")(export_command)
app.command("import")(import_command)
app.command("keycloak-sync")(keycloak_sync_command)


def main() -> None:
    """Entry point of the `maillage` console script."""
    app()


def _busy_ports(ports: Mapping[str, int]) -> list[tuple[str, int]]:
    """The (process, port) pairs whose port cannot be bound now, duplicates included."""
    busy = []
    seen: set[int] = set()
    for name, port in ports.items():
        if port in seen:
            busy.append((name, port))
            continue
        seen.add(port)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # SO_REUSEADDR as servers set it: a port in TIME_WAIT is free for them, a listening one is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                busy.append((name, port))
    return busy


def _accepts_connections(url: str) -> bool:
    host, _, port = url.removeprefix("nats://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _readiness(client: httpx.Client, url: str) -> tuple[bool, str]:
    try:
        response = client.get(f"{url}/readyz")
    except httpx.ConnectError:
        return False, "unreachable"
    except httpx.TimeoutException:
        return False, "timeout"
    except httpx.HTTPError as exc:
        return False, type(exc).__name__
    if response.status_code == 200:
        return True, "ready"
    try:
        detail = str(response.json().get("status", ""))
    except ValueError:
        detail = ""
    return False, f"{response.status_code} {detail}".strip()


def _url_width(federation: Federation) -> int:
    # URLs are what people copy: the territories column wraps instead of a URL being cut.
    return max(len(federation.nats_url), *(len(instance.url) for instance in service_instances(federation)))


def _territory_names(federation: Federation, instance: ServiceInstance) -> str:
    if not instance.territories:
        return "all" if instance.service == "gateway" else ""
    return ", ".join(federation.territory(siren).name for siren in instance.territories)


def _print_federation(
    console: Console, federation: Federation, root: DataDir, keys: Sequence[BootstrapKey], issued: bool
) -> None:
    instances = service_instances(federation)
    table = Table(
        title=f"Maillage federation: {len(federation.territories)} territories, {len(federation.nodes)} nodes"
    )
    table.add_column("service", no_wrap=True)
    table.add_column("node", no_wrap=True)
    table.add_column("territories")
    table.add_column("url", no_wrap=True, min_width=_url_width(federation))
    for instance in instances:
        node = {"registry": "(federation)", "gateway": "(edge)"}.get(instance.node_id, instance.node_id)
        table.add_row(instance.service, node, _territory_names(federation, instance), instance.url)
    table.add_row("nats", "", "", federation.nats_url)
    console.print(table)
    console.print(f"Data: {root.root}   Logs: {root.logs_dir}", soft_wrap=True)

    if not keys:
        console.print(
            f"[yellow]No plaintext keys to show: {root.keys_file} is missing. Move {root.keyring_file} away "
            "and run `maillage up` again to issue new ones.[/]",
            soft_wrap=True,
        )
        return
    freshness = "issued now" if issued else "reused"
    console.print(
        f"\nBootstrap keys ({freshness}; plaintext copy in {root.keys_file}, development only):", soft_wrap=True
    )
    for key in keys:
        if key.role == "partner":
            who = f"{DEMO_PARTNER_NAME} ({key.territory})"
        elif key.territory is None:
            who = "operator"
        else:
            who = f"{federation.territory(key.territory).name} ({key.territory})"
        # Printed as plain lines, not a table cell, so a narrow terminal never truncates a key.
        console.print(f"  {key.role:<8} {who:<42} {key.secret}", soft_wrap=True, markup=False)
    steward = next((key for key in keys if key.role == "steward"), keys[0])
    node_url = _catalog_url_of(federation, steward.territory) or federation.gateway_url
    console.print(
        f'\nTry: curl -H "Authorization: Bearer {steward.secret}" {node_url}/v1/whoami', soft_wrap=True, markup=False
    )
    other = next((n.urls.catalog for n in federation.nodes if n.urls.catalog != node_url), node_url)
    console.print(
        f"     curl -G --data-urlencode 'q=vélos' {other}/v1/search   (federated search, any node)",
        soft_wrap=True,
        markup=False,
    )
    console.print(
        f"     curl -H 'Accept: text/turtle' {node_url}/catalog   (DCAT-AP export)", soft_wrap=True, markup=False
    )


def _catalog_url_of(federation: Federation, siren: str | None) -> str | None:
    for node in federation.nodes:
        if siren in node.territories:
            return node.urls.catalog
    return None
