"""The one identity every request resolves to, whatever authenticated it."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AuthMethod", "Principal", "Role"]


class Role(StrEnum):
    STEWARD = "steward"
    DPO = "dpo"
    ANALYST = "analyst"
    ADMIN = "admin"


class AuthMethod(StrEnum):
    BOOTSTRAP_KEY = "bootstrap_key"
    API_KEY = "api_key"
    OIDC = "oidc"
    ASSERTION = "assertion"


class Principal(BaseModel):
    """Subject, organisation, roles per territory (SIREN -> roles), realm roles, scopes, authentication method.

    Roles are held per territory on purpose: a DPO of one EPCI is not a DPO anywhere else.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: str
    organisation: str | None = None
    territory_roles: dict[str, frozenset[Role]] = Field(default_factory=dict)
    realm_roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    auth_method: AuthMethod

    @property
    def is_operator(self) -> bool:
        return "operator" in self.realm_roles

    def has_role(self, territory: str, role: Role) -> bool:
        """True when the principal holds ``role`` in ``territory``.

        Operators run the federation; they hold no territory role unless one is given to them (least privilege).
        """
        return role in self.territory_roles.get(territory, frozenset())

    def acts_for(self, organisation: str) -> bool:
        """True when the principal speaks for ``organisation`` (SIRET or SIREN): it is a member of it, or holds the
        analyst, steward or admin role of that territory (a DPO reviews; it does not act as a consumer)."""
        if self.organisation == organisation:
            return True
        return bool(self.territory_roles.get(organisation, frozenset()) & {Role.ANALYST, Role.STEWARD, Role.ADMIN})

    def territories_with(self, role: Role) -> set[str]:
        return {siren for siren, roles in self.territory_roles.items() if role in roles}
