"""The data dir of an embedded federation: its layout, ``federation.json`` and the bootstrap keys.

A second `maillage up` on the same data dir resumes from what the first one wrote: same federation, same keys, same
databases and JetStream store.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from kit.auth import AuthMethod, Keyring, KeyringEntry, Principal, Role, issue_key
from kit.auth.assertions import generate_signing_key, public_key_of
from maillage.federation import Federation

__all__ = [
    "BootstrapKey",
    "DataDir",
    "DataDirError",
    "issue_bootstrap_keys",
    "load_federation",
    "load_or_issue_keys",
    "locked",
    "ensure_assertion_key",
    "read_keys_file",
    "save_federation",
    "write_keys_file",
]

KeyRole = Literal["admin", "steward", "dpo", "partner"]

_KEYS_HEADER = """\
# Maillage bootstrap keys, in plaintext: a DEVELOPMENT CONVENIENCE of `maillage up`, never for production.
# The services only know their hashes (keyring.json). Anyone who can read this file can act as these principals.
# Format: one key a line, "<label> <key>"; labels are admin, steward-<SIREN>, dpo-<SIREN>.
"""


class DataDirError(Exception):
    """The data dir cannot be used: locked by another `maillage up`, or holding an unreadable file."""


@dataclass(frozen=True)
class DataDir:
    """Where a federation keeps its state; every path a child process receives comes from here."""

    root: Path

    @property
    def federation_file(self) -> Path:
        return self.root / "federation.json"

    @property
    def keyring_file(self) -> Path:
        return self.root / "keyring.json"

    @property
    def keys_file(self) -> Path:
        return self.root / "keys.txt"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def nats_store(self) -> Path:
        return self.root / "nats" / "jetstream"

    @property
    def lock_file(self) -> Path:
        return self.root / "up.lock"

    def log_file(self, instance: str) -> Path:
        """Log of one process, e.g. ``logs/dijon-catalog.log``."""
        return self.logs_dir / f"{instance}.log"

    def service_dir(self, instance: str) -> Path:
        """Private directory of one service instance (its databases and files)."""
        return self.root / "services" / instance

    def prepare(self, instances: Sequence[str]) -> None:
        """Create the layout; the root is private to the user because it holds keys."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self.nats_store.mkdir(parents=True, exist_ok=True)
        for instance in instances:
            self.service_dir(instance).mkdir(parents=True, exist_ok=True)


class BootstrapKey(BaseModel):
    """A plaintext bootstrap key with what it is for."""

    label: str
    role: KeyRole
    territory: str | None = None
    secret: str


@contextmanager
def locked(data_dir: DataDir) -> Iterator[None]:
    """Hold the data dir for one `maillage up`: two supervisors on one JetStream store would corrupt it."""
    data_dir.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(data_dir.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            raise DataDirError(
                f"another `maillage up` (pid {holder}) is already running on {data_dir.root}; "
                "stop it or choose another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def load_federation(path: Path) -> Federation | None:
    """The saved federation, or None when this is the first `up`."""
    if not path.exists():
        return None
    try:
        return Federation.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise DataDirError(f"{path} is not a valid federation file; move it away to start afresh:\n{exc}") from exc


def save_federation(path: Path, federation: Federation) -> None:
    """Write ``federation.json`` atomically (the registry may read it while we write)."""
    _write_atomic(path, federation.model_dump_json(indent=2) + "\n", mode=0o644)


def issue_bootstrap_keys(sirens: Sequence[str]) -> tuple[Keyring, list[BootstrapKey]]:
    """One operator admin key, and a steward and a DPO key per territory: the hash-only keyring and the plaintext."""
    keyring = Keyring()
    keys: list[BootstrapKey] = []

    def add(label: str, kind: str, role: KeyRole, territory: str | None, principal: Principal) -> None:
        issued = issue_key(kind)
        keyring.keys.append(
            KeyringEntry(
                lookup_prefix=issued.lookup_prefix,
                secret_hash=issued.secret_hash,
                kind=kind,
                label=label,
                principal=principal,
            )
        )
        keys.append(BootstrapKey(label=label, role=role, territory=territory, secret=issued.secret))

    method = AuthMethod.BOOTSTRAP_KEY
    admin = Principal(subject="bootstrap-admin", realm_roles=frozenset({"operator"}), auth_method=method)
    add("admin", "adm", "admin", None, admin)
    per_territory: tuple[tuple[str, Role, KeyRole], ...] = (("stw", Role.STEWARD, "steward"), ("dpo", Role.DPO, "dpo"))
    for siren in sirens:
        for kind, role, key_role in per_territory:
            principal = Principal(
                subject=f"{key_role}-{siren}",
                organisation=siren,
                territory_roles={siren: frozenset({role})},
                auth_method=method,
            )
            add(f"{key_role}-{siren}", kind, key_role, siren, principal)
    return keyring, keys


def write_keys_file(path: Path, keys: Sequence[BootstrapKey]) -> None:
    """Write the plaintext keys, readable by the owner only."""
    body = "".join(f"{key.label} {key.secret}\n" for key in keys)
    _write_atomic(path, _KEYS_HEADER + body, mode=0o600)


def read_keys_file(path: Path) -> list[BootstrapKey]:
    """The keys of a ``keys.txt`` written by :func:`write_keys_file`."""
    keys = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        label, _, secret = line.partition(" ")
        role, _, territory = label.partition("-")
        if role not in ("admin", "steward", "dpo", "partner") or not secret:
            raise DataDirError(f"{path}: unexpected line {line[:40]!r}")
        keys.append(BootstrapKey(label=label, role=role, territory=territory or None, secret=secret.strip()))
    return keys


def load_or_issue_keys(data_dir: DataDir, sirens: Sequence[str]) -> tuple[list[BootstrapKey], bool]:
    """The keys of this data dir, issued on first `up`; also says whether they were issued just now.

    The keyring is the truth: plaintext keys that no longer match it are dropped rather than shown.
    """
    if not data_dir.keyring_file.exists():
        keyring, keys = issue_bootstrap_keys(sirens)
        keyring.save(data_dir.keyring_file)
        write_keys_file(data_dir.keys_file, keys)
        return keys, True
    try:
        keyring = Keyring.load(data_dir.keyring_file)
    except (ValidationError, ValueError) as exc:
        raise DataDirError(f"{data_dir.keyring_file} is not a valid keyring: {exc}") from exc
    if not data_dir.keys_file.exists():
        return [], False
    return [
        key
        for key in read_keys_file(data_dir.keys_file)
        # Partner keys are federated keys of the registry, not bootstrap keys: the keyring does not know them.
        if key.role == "partner" or keyring.authenticate(key.secret) is not None
    ], False


SERVICE_LABEL = "service-key-verifier"
ASSERTION_KEY_FILE = "gateway-assertion.key"


def ensure_assertion_key(data_dir: DataDir) -> str:
    """The gateway's Ed25519 key signing principal assertions to the services (base64url), made once.

    Kept in ``gateway-assertion.key`` (0600); the services are given its public half.
    """
    path = data_dir.root / ASSERTION_KEY_FILE
    if path.exists():
        key = path.read_text(encoding="utf-8").strip()
        try:
            public_key_of(key)
            return key
        except ValueError:
            pass  # unreadable: replaced below
    key = generate_signing_key()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    os.replace(tmp, path)
    return key


def ensure_service_credential(data_dir: DataDir) -> str:
    """The credential node services use to have the registry verify federated keys (scope ``apikeys:verify``).

    Kept in ``service-credential.txt`` (0600) and as a hash in the keyring; issued once, on first use.
    """
    path = data_dir.root / "service-credential.txt"
    keyring = Keyring.load(data_dir.keyring_file)
    if path.exists():
        secret = path.read_text(encoding="utf-8").strip()
        if keyring.authenticate(secret) is not None:
            return secret
    issued = issue_key("svc")
    principal = Principal(
        subject="service-exchange", scopes=frozenset({"apikeys:verify"}), auth_method=AuthMethod.BOOTSTRAP_KEY
    )
    keyring.keys = [entry for entry in keyring.keys if entry.label != SERVICE_LABEL]
    keyring.keys.append(
        KeyringEntry(
            lookup_prefix=issued.lookup_prefix,
            secret_hash=issued.secret_hash,
            kind="svc",
            label=SERVICE_LABEL,
            principal=principal,
        )
    )
    keyring.save(data_dir.keyring_file)
    _write_atomic(path, issued.secret + "\n", mode=0o600)
    return issued.secret


def _write_atomic(path: Path, text: str, *, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    # Created with its final mode, so a secret is never readable by others, not even for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # the umask may have narrowed it; the mode is what the caller asked for
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    tmp.replace(path)
