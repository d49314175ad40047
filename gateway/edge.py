"""Edge protections: token-bucket rate limits (per key or user, per organisation, per client address) and a body
size limit enforced while the body arrives, so an oversized upload is refused with 413 without being buffered."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kit.errors import TooManyRequests

__all__ = ["BodySizeLimit", "RateLimiter", "TokenBucket"]


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    rate: float
    burst: int
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per name (``key:<id>``, ``org:<siret>``, ``ip:<address>``); idle buckets are swept."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000) -> None:
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, name: str, rate: float, burst: int) -> float:
        """0 when allowed, else the seconds to wait."""
        now = self.clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._sweep(now)
            bucket = self._buckets[name] = TokenBucket(rate=rate, burst=burst, tokens=burst, updated=now)
        return bucket.take(now)

    def _sweep(self, now: float) -> None:
        # A bucket full again is indistinguishable from a new one: drop those.
        for name in [n for n, b in self._buckets.items() if b.tokens + (now - b.updated) * b.rate >= b.burst]:
            del self._buckets[name]

    def enforce(self, limits: list[tuple[str, float, int]], *, what: str) -> None:
        """429 ``rate_limit.exceeded`` with Retry-After when any of ``limits`` (name, rate, burst) is exhausted."""
        wait = max((self.check(name, rate, burst) for name, rate, burst in limits), default=0.0)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise TooManyRequests(
                f"too many requests for this {what}; retry in {retry} s",
                code="rate_limit.exceeded",
                headers={"Retry-After": str(retry)},
            )


class BodySizeLimit:
    """ASGI middleware: 413 ``request.too_large`` when Content-Length exceeds ``max_bytes`` (before reading), or when
    a body without a length grows past it while it is received."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.max_bytes:
                    await self._too_large(send)
                    return
        received = 0

        async def guarded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Rendered by the error handlers like any other error (request id included).
                    raise HTTPException(413, detail=f"the body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, guarded_receive, send)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps({"error": "request.too_large", "detail": f"the body exceeds {self.max_bytes} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
