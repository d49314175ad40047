from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kit.auth import AuthMethod, Keyring, Role
from maillage.bootstrap import (
    DataDir,
    DataDirError,
    issue_bootstrap_keys,
    load_federation,
    load_or_issue_keys,
    locked,
    read_keys_file,
    save_federation,
)
from maillage.federation import DEMO_SIRENS, build_federation, fixed_ports, load_territories


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bootstrap_keys_and_their_principals() -> None:
    keyring, keys = issue_bootstrap_keys(DEMO_SIRENS)
    assert [key.label for key in keys] == ["admin"] + [
        f"{role}-{siren}" for siren in DEMO_SIRENS for role in ("steward", "dpo")
    ]
    by_label = {key.label: key for key in keys}

    admin = keyring.authenticate(by_label["admin"].secret)
    assert admin is not None and admin.subject == "bootstrap-admin" and admin.is_operator
    assert by_label["admin"].secret.startswith("mlg_adm_")

    steward = keyring.authenticate(by_label["steward-242100410"].secret)
    assert steward is not None
    assert steward.subject == "steward-242100410"
    assert steward.organisation == "242100410"
    assert steward.auth_method is AuthMethod.BOOTSTRAP_KEY
    assert steward.has_role("242100410", Role.STEWARD)
    assert not steward.has_role("242100410", Role.DPO)
    assert not steward.has_role("242500361", Role.STEWARD)

    dpo = keyring.authenticate(by_label["dpo-200068070"].secret)
    assert dpo is not None and dpo.territories_with(Role.DPO) == {"200068070"}
    assert by_label["dpo-200068070"].secret.startswith("mlg_dpo_")
    assert by_label["steward-200068070"].secret.startswith("mlg_stw_")
    # The keyring holds hashes only.
    assert all(key.secret not in keyring.model_dump_json() for key in keys)


def test_first_up_writes_private_key_files_and_resume_keeps_them(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "data")
    data_dir.prepare(["registry"])
    assert _mode(data_dir.root) == 0o700

    keys, issued = load_or_issue_keys(data_dir, DEMO_SIRENS)
    assert issued and len(keys) == 1 + 2 * len(DEMO_SIRENS)
    assert _mode(data_dir.keyring_file) == 0o600
    assert _mode(data_dir.keys_file) == 0o600
    assert "DEVELOPMENT CONVENIENCE" in data_dir.keys_file.read_text()
    assert read_keys_file(data_dir.keys_file) == keys

    again, issued_again = load_or_issue_keys(data_dir, DEMO_SIRENS)
    assert not issued_again
    assert again == keys
    keyring = Keyring.load(data_dir.keyring_file)
    assert all(keyring.authenticate(key.secret) is not None for key in again)


def test_plaintext_keys_that_do_not_match_the_keyring_are_not_shown(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path)
    keys, _ = load_or_issue_keys(data_dir, DEMO_SIRENS)
    _, other_keys = issue_bootstrap_keys(DEMO_SIRENS)
    text = data_dir.keys_file.read_text().replace(keys[1].secret, other_keys[1].secret)
    data_dir.keys_file.write_text(text)
    resumed, _ = load_or_issue_keys(data_dir, DEMO_SIRENS)
    assert [key.label for key in resumed] == [key.label for i, key in enumerate(keys) if i != 1]

    data_dir.keys_file.unlink()
    assert load_or_issue_keys(data_dir, DEMO_SIRENS) == ([], False)


def test_federation_file_round_trip(tmp_path: Path, referentiel: Path) -> None:
    path = tmp_path / "federation.json"
    assert load_federation(path) is None
    federation = build_federation(load_territories(referentiel), fixed_ports())
    save_federation(path, federation)
    assert load_federation(path) == federation
    path.write_text('{"version": 2}')
    with pytest.raises(DataDirError, match="not a valid federation file"):
        load_federation(path)


def test_one_up_per_data_dir(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "data")
    with locked(data_dir):
        with pytest.raises(DataDirError, match="already running"):
            with locked(data_dir):
                pass
    with locked(data_dir):
        pass
