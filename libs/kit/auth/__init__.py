"""Authentication primitives shared by every service: principal, key format, bootstrap keyring."""

from kit.auth.keyring import Keyring, KeyringEntry
from kit.auth.keys import IssuedKey, KeyFormatError, ParsedKey, hash_secret, issue_key, parse_key, verify_secret
from kit.auth.principal import AuthMethod, Principal, Role

__all__ = [
    "AuthMethod",
    "IssuedKey",
    "KeyFormatError",
    "Keyring",
    "KeyringEntry",
    "ParsedKey",
    "Principal",
    "Role",
    "hash_secret",
    "issue_key",
    "parse_key",
    "verify_secret",
]
