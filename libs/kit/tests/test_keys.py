"""Key format, checksum and the bootstrap keyring."""

from __future__ import annotations

import pytest

from kit.auth import AuthMethod, Keyring, KeyringEntry, Principal, Role, issue_key, parse_key
from kit.auth.keys import KeyFormatError, verify_secret


def test_issued_key_has_typed_prefix_and_verifies():
    key = issue_key("prt")
    assert key.secret.startswith("mlg_prt_")
    assert len(key.secret) == len("mlg_prt_") + 38
    parsed = parse_key(key.secret)
    assert parsed.lookup_prefix == key.lookup_prefix
    assert verify_secret(key.secret, key.secret_hash)
    assert key.secret not in key.secret_hash


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s[:-1] + ("0" if s[-1] != "0" else "1"),  # checksum
        lambda s: s[:12] + ("a" if s[12] != "a" else "b") + s[13:],  # body
        lambda s: s.replace("mlg_", "mlh_"),
        lambda s: s + "x",
        lambda s: s.upper(),
        lambda s: "",
        lambda s: s[:20],
    ],
)
def test_malformed_keys_are_refused_without_lookup(mutate):
    key = issue_key("adm")
    with pytest.raises(KeyFormatError):
        parse_key(mutate(key.secret))


def test_keyring_authenticates_only_known_keys(tmp_path):
    known, other = issue_key("stw"), issue_key("stw")
    principal = Principal(
        subject="steward-242100410",
        organisation="242100410",
        territory_roles={"242100410": frozenset({Role.STEWARD})},
        auth_method=AuthMethod.BOOTSTRAP_KEY,
    )
    ring = Keyring(
        keys=[
            KeyringEntry(
                lookup_prefix=known.lookup_prefix,
                secret_hash=known.secret_hash,
                kind="stw",
                label="steward",
                principal=principal,
            )
        ]
    )
    path = tmp_path / "keyring.json"
    ring.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert known.secret not in path.read_text()
    loaded = Keyring.load(path)
    assert loaded.authenticate(known.secret) == principal
    assert loaded.authenticate(other.secret) is None
    assert loaded.authenticate("mlg_stw_garbage") is None


def test_roles_are_per_territory():
    principal = Principal(
        subject="someone",
        territory_roles={"242100410": frozenset({Role.ANALYST}), "242500361": frozenset({Role.STEWARD})},
        auth_method=AuthMethod.OIDC,
    )
    assert principal.has_role("242500361", Role.STEWARD)
    assert not principal.has_role("242100410", Role.STEWARD)
    assert principal.territories_with(Role.ANALYST) == {"242100410"}
    operator = Principal(subject="op", realm_roles=frozenset({"operator"}), auth_method=AuthMethod.OIDC)
    assert operator.is_operator and not operator.has_role("242100410", Role.DPO)  # least privilege
