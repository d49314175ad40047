"""One error model: every failure answers {"error": "<dotted.code>", "detail": ...} with the right status."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict

from kit.errors import Conflict, NotFound, install_error_handlers


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/missing")
    def missing() -> None:
        raise NotFound("dataset 242100410/velos is unknown", code="dataset.not_found")

    @app.post("/conflict")
    def conflict() -> None:
        raise Conflict("wrong state", code="agreement.illegal_transition", extra={"state": "ACTIVE"})

    @app.post("/items")
    def create(body: Body) -> Body:
        return body

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    return app


@pytest.fixture
def client():
    return TestClient(make_app(), raise_server_exceptions=False)


def test_domain_errors(client):
    response = client.get("/missing")
    assert response.status_code == 404
    assert response.json() == {"error": "dataset.not_found", "detail": "dataset 242100410/velos is unknown"}
    response = client.post("/conflict")
    assert response.status_code == 409
    assert response.json()["state"] == "ACTIVE"


def test_validation_errors_do_not_echo_input(client):
    response = client.post("/items", json={"name": "x", "password": "hunter2"})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "request.invalid"
    assert body["fields"][0]["loc"] == ["body", "password"]
    assert "hunter2" not in response.text


def test_malformed_and_non_utf8_bodies(client):
    response = client.post("/items", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"] == "request.malformed_json"
    latin1 = '{"name": "caf\xe9"}'.encode("latin-1")
    response = client.post("/items", content=latin1, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "request.malformed_body"


def test_unknown_route_and_method(client):
    assert client.get("/nope").json()["error"] == "http.not_found"
    response = client.delete("/missing")
    assert response.status_code == 405
    assert response.json()["error"] == "http.method_not_allowed"


def test_unexpected_error_hides_internals(client):
    response = client.get("/boom")
    assert response.status_code == 500
    assert response.json()["error"] == "internal"
    assert "passwd" not in response.text and "Traceback" not in response.text
