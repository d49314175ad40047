"""A territory's reversibility archive: everything it needs to leave a node and start again on another one.

``export_territory`` writes one ``.tar.gz`` (written beside, then renamed: a failed export leaves nothing)::

    manifest.json                 format, territory, time, every file with its SHA-256 and size, per-dataset figures
    catalog/datasets.json         the catalog's view of every dataset (drafts included), metadata as DCAT-AP fields
    catalog/catalog.ttl           the node's DCAT-AP 3 catalogue (Turtle)
    datasets/<slug>/data.parquet  every row, as stored (the exchange's canonical form)
    datasets/<slug>/data.csv      the same rows as CSV (UTF-8, comma), for anyone without Parquet tools
    datasets/<slug>/schema.json   the Table Schema the rows were validated against
    agreements/agreements.json    the agreements the territory is party to, with their history and terms versions
    audit/audit.jsonl             the hash-chained audit log, one record per line; audit/verify.json its check
    consent/consents.json         consent notices, records and events (pseudonyms only) and the receipt keys

``import_territory`` restores it on a fresh node: datasets described and published again in the catalog, their rows
ingested by the exchange (validated as any upload), the audit chain (verified, then continued by new records) and
the consent records (the exchanges receive their state). Agreements live in the federation's registry and do not
move; they are in the archive for the territory's records. The pseudonymisation secret is not in the archive (it is
a secret): consent records only match the rows again on a node given the same ``MAILLAGE_PSEUDONYM_SECRET``.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ARCHIVE_FORMAT", "ArchiveError", "NodeClients", "export_territory", "import_territory", "read_manifest"]

ARCHIVE_FORMAT = "maillage-territory-archive/1"
Progress = Callable[[str], None]


class ArchiveError(RuntimeError):
    """The export or the import cannot go on; the message says why."""


@dataclass
class NodeClients:
    """HTTP clients of the node's services (with the steward's or DPO's credentials), and of the registry."""

    catalog: httpx.Client
    exchange: httpx.Client
    consent: httpx.Client
    registry: httpx.Client | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code >= 400:
        try:
            body = response.json()
            reason = f"{body.get('error')}: {body.get('detail')}"
        except ValueError:
            reason = response.text[:200]
        raise ArchiveError(f"{what}: HTTP {response.status_code} {reason}")
    return response


def _download(client: httpx.Client, url: str, target: Path, what: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with client.stream("GET", url) as response:
        if response.status_code >= 400:
            response.read()
            _check(response, what)
        with open(target, "wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1, default=str), encoding="utf-8")


def export_territory(
    clients: NodeClients, siren: str, output: Path, progress: Progress = lambda _: None
) -> dict[str, Any]:
    """Write the archive of ``siren`` to ``output``; returns its manifest."""
    base = f"/v1/territories/{siren}"
    with tempfile.TemporaryDirectory(prefix="maillage-export-") as tmp:
        root = Path(tmp)
        progress("catalogue")
        datasets = _check(clients.catalog.get(f"{base}/datasets"), "the catalog's datasets").json()
        _write_json(root / "catalog/datasets.json", datasets)
        turtle = _check(clients.catalog.get("/catalog.ttl", params={"page_size": 500}), "the DCAT-AP catalogue")
        (root / "catalog/catalog.ttl").write_bytes(turtle.content)
        stored = {d["slug"]: d for d in _check(clients.exchange.get(f"{base}/datasets"), "the data").json()}
        figures: dict[str, Any] = {}
        for dataset in datasets:
            slug = dataset["slug"]
            folder = root / "datasets" / slug
            _write_json(folder / "schema.json", dataset["metadata"]["table_schema"])
            if slug not in stored:
                continue
            progress(f"dataset {slug}")
            _download(clients.exchange, f"{base}/datasets/{slug}/data.parquet", folder / "data.parquet", slug)
            _download(clients.exchange, f"{base}/datasets/{slug}/data.csv", folder / "data.csv", slug)
            figures[slug] = {"rows": stored[slug]["rows"], "csv_sha256": _sha256(folder / "data.csv")}
        if clients.registry is not None:
            progress("agreements")
            listed = _check(clients.registry.get("/v1/agreements"), "the agreements").json()
            mine = [a for a in listed if a["provider"] == siren or a["consumer"] == siren]
            for agreement in mine:
                agreement["history"] = _check(
                    clients.registry.get(f"/v1/agreements/{agreement['id']}/history"), "an agreement's history"
                ).json()
            _write_json(root / "agreements/agreements.json", mine)
        progress("audit log")
        records: list[dict[str, Any]] = []
        while True:
            page = _check(
                clients.exchange.get(f"{base}/audit", params={"after": len(records), "limit": 1000}), "the audit log"
            ).json()
            records.extend(page)
            if len(page) < 1000:
                break
        (root / "audit").mkdir(parents=True, exist_ok=True)
        with open(root / "audit/audit.jsonl", "w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        _write_json(root / "audit/verify.json", _check(clients.exchange.get(f"{base}/audit/verify"), "audit").json())
        progress("consent records")
        _write_json(
            root / "consent/consents.json", _check(clients.consent.get(f"{base}/consent/export"), "consents").json()
        )
        files = [
            {"path": str(p.relative_to(root)), "sha256": _sha256(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*"))
            if p.is_file()
        ]
        manifest = {
            "format": ARCHIVE_FORMAT,
            "territory": siren,
            "created_at": datetime.now(UTC).isoformat(),
            "files": files,
            "datasets": figures,
            "audit_records": len(records),
        }
        _write_json(root / "manifest.json", manifest)
        progress("archive")
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".part")
        with tarfile.open(partial, "w:gz") as archive:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    archive.add(path, arcname=str(path.relative_to(root)))
        partial.replace(output)
    return manifest


def read_manifest(archive: Path, into: Path) -> dict[str, Any]:
    """Unpack ``archive`` into ``into`` and check every file against the manifest."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"{archive} is not a readable archive: {exc}") from exc
    try:
        manifest = json.loads((into / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArchiveError("the archive has no readable manifest.json") from exc
    if manifest.get("format") != ARCHIVE_FORMAT:
        raise ArchiveError(f"unknown archive format {manifest.get('format')!r}")
    for entry in manifest["files"]:
        path = into / entry["path"]
        if not path.is_file() or _sha256(path) != entry["sha256"]:
            raise ArchiveError(f"{entry['path']} is missing or does not match its checksum")
    return dict(manifest)


def import_territory(
    clients: NodeClients, archive: Path, progress: Progress = lambda _: None, *, wait: float = 30.0
) -> dict[str, Any]:
    """Restore the archive on a fresh node; returns what was restored, with the checksums compared."""
    with tempfile.TemporaryDirectory(prefix="maillage-import-") as tmp:
        root = Path(tmp)
        manifest = read_manifest(archive, root)
        siren = manifest["territory"]
        base = f"/v1/territories/{siren}"
        datasets = json.loads((root / "catalog/datasets.json").read_text(encoding="utf-8"))
        node = _check(clients.catalog.get("/healthz"), "the new node's catalog").json()["node"]
        for dataset in datasets:
            progress(f"catalogue: {dataset['slug']}")
            metadata = dict(dataset["metadata"])
            if isinstance(metadata.get("hosting"), dict):
                metadata["hosting"] = {**metadata["hosting"], "node": node}  # the data now lives on this node
            body = {"slug": dataset["slug"], "metadata": metadata}
            _check(clients.catalog.post(f"{base}/datasets", json=body), f"describing {dataset['slug']}")
            if dataset.get("published_revision") is not None:
                _check(
                    clients.catalog.post(f"{base}/datasets/{dataset['slug']}/publish"), f"publishing {dataset['slug']}"
                )
        restored: dict[str, Any] = {}
        for slug, figures in sorted(manifest["datasets"].items()):
            progress(f"dataset {slug}")
            data = (root / "datasets" / slug / "data.parquet").read_bytes()
            deadline = time.monotonic() + wait
            while True:  # the exchange learns the dataset from the catalog's advertisement, over NATS
                response = clients.exchange.post(
                    f"{base}/datasets/{slug}/data",
                    params={"mode": "replace"},
                    content=data,
                    headers={"Content-Type": "application/vnd.apache.parquet"},
                )
                if response.status_code != 404 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            report = _check(response, f"ingesting {slug}").json()
            restored_csv = root / "check.csv"
            _download(clients.exchange, f"{base}/datasets/{slug}/data.csv", restored_csv, slug)
            restored[slug] = {
                "rows": report["rows_total"],
                "csv_sha256": _sha256(restored_csv),
                "identical": _sha256(restored_csv) == figures["csv_sha256"] and report["rows_total"] == figures["rows"],
            }
        progress("audit log")
        lines = (root / "audit/audit.jsonl").read_text(encoding="utf-8").splitlines()
        chain = _check(
            clients.exchange.post(f"{base}/audit/import", json={"records": [json.loads(line) for line in lines]}),
            "restoring the audit log",
        ).json()
        progress("consent records")
        consents = json.loads((root / "consent/consents.json").read_text(encoding="utf-8"))
        imported = _check(clients.consent.post(f"{base}/consent/import", json=consents), "restoring consents").json()
    return {"territory": siren, "datasets": restored, "audit": chain, "consents": imported}
