"""Bootstrap keyring of the embedded federation: hash-only records of the keys `maillage up` issued.

The file is JSON: ``{"version": 1, "keys": [{"lookup_prefix", "secret_hash", "kind", "label", "principal"}]}``.
Services load it at start and authenticate ``Authorization: Bearer mlg_...`` against it. Federated API keys issued
by the registry replace it for partners; Keycloak replaces it for people.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from kit.auth.keys import KeyFormatError, parse_key, verify_secret
from kit.auth.principal import Principal

__all__ = ["Keyring", "KeyringEntry"]


class KeyringEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lookup_prefix: str
    secret_hash: str
    kind: str
    label: str
    principal: Principal


class Keyring(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    keys: list[KeyringEntry] = []

    @classmethod
    def load(cls, path: Path) -> Keyring:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True), encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(path)

    def authenticate(self, secret: str) -> Principal | None:
        """The principal of a presented key, or None. Malformed keys are refused before any lookup."""
        try:
            parsed = parse_key(secret)
        except KeyFormatError:
            return None
        for entry in self.keys:
            if entry.lookup_prefix == parsed.lookup_prefix and verify_secret(secret, entry.secret_hash):
                return entry.principal
        return None
