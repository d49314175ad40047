"""Who is calling the gateway: Keycloak access tokens (verified locally), federated API keys (verified by the
registry, cached for seconds, dropped on revocation events), bootstrap keys of the embedded federation.

Refusals are 401 ``auth.<reason>`` (``auth.token_expired``, ``auth.apikey_revoked``...); what a known caller may not
do is 403. Credentials are never logged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from nats.aio.msg import Msg
from starlette.requests import Request

from gateway.directory import Directory
from kit.auth import AuthMethod, Keyring, Principal
from kit.auth.oidc import OidcVerifier, TokenRefused, looks_like_jwt
from kit.auth.remote import RegistryKeyVerifier
from kit.errors import Unauthorized
from kit.messaging import Messaging

__all__ = ["Caller", "GatewayAuthenticator", "RevocationListener"]

log = logging.getLogger(__name__)

REVOCATION_SUBJECTS = ("registry.apikey.revoked.*", "registry.apikey.rotated.*", "registry.apikey.expired.*")


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the principal and the credential it presented (to forward when no assertion key)."""

    principal: Principal
    credential: str


def _refuse(detail: str, code: str) -> Unauthorized:
    return Unauthorized(detail, code=code, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class GatewayAuthenticator:
    """Resolves ``Authorization: Bearer <token or key>`` to a :class:`Caller`."""

    def __init__(
        self,
        *,
        keyring: Keyring,
        directory: Directory,
        oidc: OidcVerifier | None,
        apikeys: RegistryKeyVerifier | None,
    ) -> None:
        self.keyring = keyring
        self.directory = directory
        self.oidc = oidc
        self.apikeys = apikeys

    async def authenticate(self, request: Request) -> Caller | None:
        """The caller, None when no credentials are sent, 401 with a reason when they are refused."""
        header = request.headers.get("authorization")
        if not header:
            return None
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorized(
                "the Authorization header must be 'Bearer <token or key>'",
                code="auth.malformed_credentials",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if looks_like_jwt(credential):
            return Caller(await self._token(credential), credential)
        principal = self.keyring.authenticate(credential)
        if principal is not None:
            return Caller(principal, credential)
        if self.apikeys is None:
            raise _refuse("unknown, malformed or revoked key", "auth.invalid_credentials")
        principal, reason = await self.apikeys.check(credential)
        if principal is None:
            # apikey.revoked -> auth.apikey_revoked: one namespace for every authentication refusal.
            raise _refuse("the registry refuses this API key", "auth." + reason.replace(".", "_"))
        return Caller(principal, credential)

    async def _token(self, token: str) -> Principal:
        if self.oidc is None:
            raise _refuse("this gateway is not configured for Keycloak tokens", "auth.token_not_accepted")
        try:
            principal = await self.oidc.verify(token)
        except TokenRefused as exc:
            raise _refuse(exc.detail, f"auth.{exc.reason}") from exc
        if principal.organisation is not None and len(principal.organisation) == 9:
            # A partner's service account: Keycloak knows the organisation by its SIREN, agreements by the SIRET
            # the registry admitted.
            siret = await self.directory.organisation_for(principal.organisation)
            if siret is not None:
                principal = principal.model_copy(update={"organisation": siret})
        return principal

    async def close(self) -> None:
        if self.oidc is not None:
            await self.oidc.close()
        if self.apikeys is not None:
            await self.apikeys.close()


class RevocationListener:
    """Follows ``registry.apikey.{revoked,rotated,expired}.*`` (core NATS, as the registry publishes them to its
    stream) and drops the key's cached verification at once; the cache TTL bounds the worst case."""

    def __init__(self, messaging: Messaging, apikeys: RegistryKeyVerifier) -> None:
        self.messaging = messaging
        self.apikeys = apikeys
        self._subscriptions: list[object] = []
        self.dropped = 0

    async def start(self) -> None:
        if self.messaging.connected:
            await self._subscribe()
        self.messaging.on_ready(self._subscribe)

    async def _subscribe(self) -> None:
        await self._unsubscribe()
        assert self.messaging.nc is not None
        for subject in REVOCATION_SUBJECTS:
            self._subscriptions.append(await self.messaging.nc.subscribe(subject, cb=self._on_event))
        # Events missed while disconnected are unknown: forget everything and ask the registry again.
        self.apikeys.forget_all()

    async def _unsubscribe(self) -> None:
        for subscription in self._subscriptions:
            try:
                await subscription.unsubscribe()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - a closed connection has nothing to unsubscribe
                pass
        self._subscriptions = []

    async def _on_event(self, msg: Msg) -> None:
        try:
            envelope = json.loads(msg.data)
            prefix = envelope["data"]["lookup_prefix"]
        except (ValueError, KeyError, TypeError):
            self.apikeys.forget_all()  # cannot tell which key: drop them all
            return
        if isinstance(prefix, str):
            self.apikeys.forget_prefix(prefix)
            self.dropped += 1

    async def stop(self) -> None:
        await self._unsubscribe()


def is_federated_key(principal: Principal) -> bool:
    return principal.auth_method is AuthMethod.API_KEY
