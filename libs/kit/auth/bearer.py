"""Every bearer credential a service accepts beyond its own keyring: gateway assertions, Keycloak tokens, federated
API keys (through the registry), with the policy that decides which of them a service takes directly.

:class:`BearerVerifier` has the shape of :class:`kit.service.KeyVerifier` (``verify(secret) -> Principal | None``),
so the HTTP caller dependency and the exchange's NATS responder use it alike. It raises
:class:`~kit.errors.Unauthorized` with a precise ``auth.<reason>`` for JWT-shaped credentials it refuses, and for
federated keys sent directly to a service that requires the gateway.
"""

from __future__ import annotations

from typing import Protocol

from kit.auth.assertions import AssertionVerifier, is_assertion
from kit.auth.oidc import OidcVerifier, TokenRefused, looks_like_jwt
from kit.auth.principal import Principal
from kit.errors import Unauthorized

__all__ = ["BearerVerifier", "FederatedKeyVerifier"]


class FederatedKeyVerifier(Protocol):
    async def verify(self, secret: str) -> Principal | None: ...


def _refused(exc: TokenRefused) -> Unauthorized:
    return Unauthorized(
        exc.detail, code=f"auth.{exc.reason}", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )


class BearerVerifier:
    """Assertions (when gateway keys are configured), Keycloak tokens (when an issuer is configured), then federated
    API keys. With ``gateway_required``, federated keys are refused here: partners come through the gateway."""

    def __init__(
        self,
        *,
        assertions: AssertionVerifier | None = None,
        oidc: OidcVerifier | None = None,
        federated: FederatedKeyVerifier | None = None,
        gateway_required: bool = False,
    ) -> None:
        self.assertions = assertions
        self.oidc = oidc
        self.federated = federated
        self.gateway_required = gateway_required

    async def verify(self, secret: str) -> Principal | None:
        """The principal of ``secret``; None for an unknown key; Unauthorized with a reason for a refused token."""
        if looks_like_jwt(secret):
            return await self.verify_token(secret)
        if self.federated is None:
            return None
        if self.gateway_required:
            raise Unauthorized(
                "federated API keys are accepted through the gateway only",
                code="auth.gateway_required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await self.federated.verify(secret)

    async def verify_token(self, token: str) -> Principal:
        """A gateway assertion or a Keycloak access token; Unauthorized with ``auth.<reason>`` when refused."""
        if is_assertion(token):
            if self.assertions is None or not self.assertions.configured:
                raise Unauthorized("this service trusts no gateway key", code="auth.assertion_untrusted")
            try:
                return self.assertions.verify(token)
            except TokenRefused as exc:
                raise _refused(exc) from exc
        if self.oidc is None:
            raise Unauthorized(
                "this service accepts no Keycloak token; call it through the gateway",
                code="auth.token_not_accepted",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            return await self.oidc.verify(token)
        except TokenRefused as exc:
            raise _refused(exc) from exc

    async def close(self) -> None:
        if self.oidc is not None:
            await self.oidc.close()
