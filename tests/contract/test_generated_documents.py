"""The committed AsyncAPI, JSON Schema and OpenAPI documents are exactly what the code generates."""

from __future__ import annotations

import yaml

from contracts.events import event_classes
from contracts.requests import REQUEST_REPLIES
from contracts.streams import stream_for_subject
from maillage.contracts_gen import CONTRACTS_DIR, check


def test_committed_documents_match_the_code():
    problems = check()
    assert problems == [], "\n".join(problems)


def test_asyncapi_lists_every_event_on_a_captured_subject():
    document = yaml.safe_load((CONTRACTS_DIR / "asyncapi.yaml").read_text(encoding="utf-8"))
    assert document["asyncapi"] == "3.0.0"
    names = {message["name"] for message in document["components"]["messages"].values()}
    request_replies = {f"{rr.name}.{part}" for rr in REQUEST_REPLIES for part in ("request", "reply")}
    assert {"exchange.query.request", "exchange.subject.request"} <= request_replies
    assert names == {cls.cloud_type() for cls in event_classes()} | request_replies | {"exchange.ingest.readings"}
    core = {rr.name.replace(".", "-") for rr in REQUEST_REPLIES}
    for name, channel in document["channels"].items():
        if name in core:
            continue  # request-reply: core NATS, not persisted
        stream_for_subject(channel["address"])  # every event subject is captured by a declared stream
