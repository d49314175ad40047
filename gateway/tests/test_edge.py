"""Rate limits and the body size limit of the gateway's edge (no server needed)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from gateway.edge import BodySizeLimit, RateLimiter
from kit.errors import TooManyRequests, install_error_handlers


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.check("key:a", rate=2.0, burst=3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("key:a", rate=2.0, burst=3) == pytest.approx(0.5)
    assert limiter.check("key:b", rate=2.0, burst=3) == 0.0  # buckets are per name
    now[0] = 0.5
    assert limiter.check("key:a", rate=2.0, burst=3) == 0.0


def test_enforce_answers_429_with_retry_after_for_the_tightest_limit() -> None:
    limiter = RateLimiter(clock=lambda: 0.0)
    limits = [("key:a", 100.0, 100), ("org:x", 0.25, 1)]
    limiter.enforce(limits, what="key or organisation")
    with pytest.raises(TooManyRequests) as refused:
        limiter.enforce(limits, what="key or organisation")
    assert refused.value.code == "rate_limit.exceeded"
    assert refused.value.headers["Retry-After"] == "4"


def _app(limit: int) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    app.add_middleware(BodySizeLimit, max_bytes=limit)
    return TestClient(app)


def test_body_limit_by_declared_length_and_while_streaming() -> None:
    client = _app(1024)
    assert client.post("/upload", content=b"x" * 1024).json() == {"bytes": 1024}
    declared = client.post("/upload", content=b"x" * 1025)
    assert declared.status_code == 413 and declared.json()["error"] == "request.too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(4):
            yield b"x" * 512

    streamed = client.post("/upload", content=chunks())
    assert streamed.status_code == 413 and streamed.json()["error"] == "request.too_large"
