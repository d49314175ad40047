"""The demo's partner organisation: a start-up admitted by the registry, holding a federated API key."""

from __future__ import annotations

import httpx

from maillage.bootstrap import BootstrapKey, DataDir, write_keys_file
from maillage.federation import Federation

__all__ = ["DEMO_PARTNER_NAME", "DEMO_PARTNER_SIRET", "ensure_demo_partner"]

DEMO_PARTNER_SIRET = "73282932000074"
DEMO_PARTNER_NAME = "Mobilab SAS (partenaire de démonstration)"
SCOPES = ["query", "catalog:read", "agreements:read", "agreements:write"]


def ensure_demo_partner(federation: Federation, root: DataDir, keys: list[BootstrapKey]) -> str | None:
    """Admit the demo partner and issue its federated key once (kept in keys.txt); returns a problem, or None."""
    if any(key.role == "partner" for key in keys):
        return None
    admin = next((key for key in keys if key.role == "admin"), None)
    if admin is None:
        return "no operator key to admit the demo partner with"
    headers = {"Authorization": f"Bearer {admin.secret}"}
    try:
        with httpx.Client(base_url=federation.registry_url, timeout=10, trust_env=False) as client:
            admitted = client.post(
                "/v1/organisations",
                json={
                    "siret": DEMO_PARTNER_SIRET,
                    "name": DEMO_PARTNER_NAME,
                    "contact_email": "contact@mobilab.example",
                },
                headers=headers,
            )
            if admitted.status_code not in (201, 409):
                return f"the registry refused the demo partner: {admitted.status_code} {admitted.text[:200]}"
            issued = client.post(
                f"/v1/organisations/{DEMO_PARTNER_SIRET}/apikeys",
                json={"name": "clé de démonstration", "scopes": SCOPES},
                headers=headers,
            )
            if issued.status_code != 201:
                return f"the registry refused the demo partner's key: {issued.status_code} {issued.text[:200]}"
    except httpx.HTTPError as exc:
        return f"the registry did not answer: {exc}"
    keys.append(
        BootstrapKey(
            label=f"partner-{DEMO_PARTNER_SIRET}",
            role="partner",
            territory=DEMO_PARTNER_SIRET,
            secret=issued.json()["secret"],
        )
    )
    write_keys_file(root.keys_file, keys)
    return None
