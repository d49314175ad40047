from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maillage.archive import ARCHIVE_FORMAT, ArchiveError, read_manifest
from maillage.cli import app


def test_export_without_urls_or_a_demo_federation_says_what_to_give(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "--territory", "242100410", "--data-dir", str(tmp_path)], env={})
    assert result.exit_code == 1 and "--catalog-url" in result.output
    bad = CliRunner().invoke(app, ["export", "--territory", "242100411", "--data-dir", str(tmp_path)])
    assert bad.exit_code == 2


def _archive(path: Path, files: dict[str, bytes], manifest: dict) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in {**files, "manifest.json": json.dumps(manifest).encode()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def test_an_archive_whose_file_does_not_match_its_checksum_is_refused(tmp_path: Path) -> None:
    manifest = {
        "format": ARCHIVE_FORMAT,
        "territory": "242100410",
        "files": [{"path": "catalog/datasets.json", "sha256": "0" * 64, "bytes": 2}],
        "datasets": {},
    }
    _archive(tmp_path / "a.tar.gz", {"catalog/datasets.json": b"[]"}, manifest)
    with pytest.raises(ArchiveError, match="checksum"):
        read_manifest(tmp_path / "a.tar.gz", tmp_path / "out")
    _archive(tmp_path / "b.tar.gz", {}, {**manifest, "format": "something/9"})
    with pytest.raises(ArchiveError, match="unknown archive format"):
        read_manifest(tmp_path / "b.tar.gz", tmp_path / "out-b")
    (tmp_path / "c.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(ArchiveError, match="not a readable archive"):
        read_manifest(tmp_path / "c.tar.gz", tmp_path / "out-c")
    result = CliRunner().invoke(app, ["import", str(tmp_path / "a.tar.gz"), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "import failed" in result.output
