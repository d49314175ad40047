"""``maillage export`` and ``maillage import``: a territory's reversibility archive (see :mod:`maillage.archive`)."""

from __future__ import annotations

import json
import tarfile
from datetime import date
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from contracts.identifiers import SubjectTokenError, validate_siren
from maillage.archive import ArchiveError, NodeClients, export_territory, import_territory
from maillage.bootstrap import DataDir, DataDirError, load_federation, read_keys_file

__all__ = ["export_command", "import_command"]

Url = Annotated[str | None, typer.Option(help="Base URL (default: from --data-dir's running demo federation).")]
KeyOption = Annotated[
    str | None,
    typer.Option("--key", envvar="MAILLAGE_KEY", help="A steward key of the territory (or MAILLAGE_KEY)."),
]
DataDirOption = Annotated[Path, typer.Option("--data-dir", help="The demo federation's state directory.")]


def _clients(
    siren: str,
    key: str | None,
    data_dir: Path,
    urls: dict[str, str | None],
    timeout: float,
) -> NodeClients:
    resolved = dict(urls)
    if not all(resolved[name] for name in ("catalog", "exchange", "consent")) or key is None:
        federation = load_federation(DataDir(data_dir).federation_file)
        if federation is None:
            raise ArchiveError("give --catalog-url, --exchange-url, --consent-url and --key (no demo federation here)")
        node = next((n for n in federation.nodes if siren in n.territories), None)
        if node is None:
            raise ArchiveError(f"no node of the demo federation hosts {siren}")
        resolved = {
            "catalog": resolved["catalog"] or node.urls.catalog,
            "exchange": resolved["exchange"] or node.urls.exchange,
            "consent": resolved["consent"] or node.urls.consent,
            "registry": resolved["registry"] or federation.registry_url,
        }
        if key is None:
            stewards = [k for k in read_keys_file(DataDir(data_dir).keys_file) if k.label == f"steward-{siren}"]
            if not stewards:
                raise ArchiveError(f"no steward key of {siren} in {data_dir}; give --key")
            key = stewards[0].secret
    headers = {"Authorization": f"Bearer {key}"}

    def client(name: str) -> httpx.Client:
        return httpx.Client(base_url=str(resolved[name]), headers=headers, timeout=timeout)

    return NodeClients(
        catalog=client("catalog"),
        exchange=client("exchange"),
        consent=client("consent"),
        registry=client("registry") if resolved.get("registry") else None,
    )


def _siren(value: str) -> str:
    try:
        return validate_siren(value)
    except SubjectTokenError as exc:
        raise typer.BadParameter(str(exc)) from exc


def export_command(
    territory: Annotated[str, typer.Option("--territory", help="SIREN of the territory, e.g. 242100410.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Default: <SIREN>-<date>.tar.gz")] = None,
    catalog_url: Url = None,
    exchange_url: Url = None,
    consent_url: Url = None,
    registry_url: Url = None,
    key: KeyOption = None,
    data_dir: DataDirOption = Path(".maillage"),
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds per HTTP call.")] = 600.0,
) -> None:
    """Write one archive with every dataset (Parquet and CSV), schemas, DCAT-AP catalogue, agreements, audit log and
    consent records of a territory, with a manifest of checksums."""
    console = Console(stderr=True)
    siren = _siren(territory)
    target = output or Path(f"{siren}-{date.today().isoformat()}.tar.gz")
    urls = {"catalog": catalog_url, "exchange": exchange_url, "consent": consent_url, "registry": registry_url}
    try:
        clients = _clients(siren, key, data_dir, urls, timeout)
        with console.status("exporting...") as status:
            manifest = export_territory(clients, siren, target, lambda step: status.update(f"exporting {step}..."))
    except (ArchiveError, DataDirError, httpx.HTTPError) as exc:
        console.print(f"[red]export failed:[/red] {exc}")
        raise typer.Exit(1) from None
    rows = sum(d["rows"] for d in manifest["datasets"].values())
    console.print(
        f"[green]✔[/green] {target}: {len(manifest['datasets'])} datasets ({rows:,} rows), "
        f"{manifest['audit_records']} audit records, {len(manifest['files'])} files with checksums"
    )


def import_command(
    archive: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The archive.")],
    catalog_url: Url = None,
    exchange_url: Url = None,
    consent_url: Url = None,
    key: KeyOption = None,
    data_dir: DataDirOption = Path(".maillage"),
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds per HTTP call.")] = 600.0,
) -> None:
    """Restore a territory's archive on a fresh node (datasets, catalogue, audit log, consent records)."""
    console = Console(stderr=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.extractfile("manifest.json")
            siren = json.loads(member.read())["territory"] if member else ""
        urls: dict[str, str | None] = {
            "catalog": catalog_url,
            "exchange": exchange_url,
            "consent": consent_url,
            "registry": None,
        }
        clients = _clients(_siren(siren), key, data_dir, urls, timeout)
        clients.registry = None
        with console.status("importing...") as status:
            result = import_territory(clients, archive, lambda step: status.update(f"importing {step}..."))
    except (ArchiveError, DataDirError, httpx.HTTPError, tarfile.TarError, KeyError, ValueError) as exc:
        console.print(f"[red]import failed:[/red] {exc}")
        raise typer.Exit(1) from None
    different = [slug for slug, d in result["datasets"].items() if not d["identical"]]
    console.print(
        f"[green]✔[/green] {siren}: {len(result['datasets'])} datasets, {result['audit']['records']} audit records, "
        f"{result['consents']['records']} consent records restored"
    )
    if different:
        console.print(f"[yellow]rows differ from the archive's checksums:[/yellow] {', '.join(different)}")
        raise typer.Exit(1)
