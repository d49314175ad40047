"""Generate the committed contract documents from the code: AsyncAPI 3.0, JSON Schemas, OpenAPI per service.

``maillage contracts`` writes them; ``maillage contracts --check`` (and the contract test) fails when the committed
files differ from what the code generates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from contracts.envelope import Envelope
from contracts.events import Event, event_classes
from contracts.requests import REQUEST_REPLIES, SensorReadingsV1
from contracts.streams import KV_BUCKETS, STREAMS, stream_for_subject

__all__ = ["CONTRACTS_DIR", "check", "generate", "write"]

CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "contracts"
SERVICES = ("registry", "catalog", "exchange", "consent", "gateway")
_REF = "#/components/schemas/{model}"


def _schema_name(cls: type[Event]) -> str:
    return cls.__name__


def _hoist(schema: dict[str, Any], into: dict[str, Any]) -> dict[str, Any]:
    for name, definition in schema.pop("$defs", {}).items():
        into[name] = definition
    return schema


def _channel_key(cls: type[Event]) -> str:
    return cls.event_name.replace(".", "-") + f"-v{cls.version}"


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every event, with the CloudEvents envelope and the streams."""
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    schemas["Envelope"] = _hoist(Envelope.model_json_schema(ref_template=_REF), schemas)
    for cls in event_classes():
        name = _schema_name(cls)
        schemas[name] = _hoist(cls.model_json_schema(ref_template=_REF), schemas)
        key = _channel_key(cls)
        messages[key] = {
            "name": cls.cloud_type(),
            "title": cls.__name__,
            "summary": cls.summary,
            "contentType": "application/cloudevents+json",
            "headers": {
                "type": "object",
                "properties": {
                    "Nats-Msg-Id": {"type": "string", "description": "the envelope id, for JetStream deduplication"},
                    "Ce-Type": {"type": "string", "const": cls.cloud_type()},
                    "traceparent": {"type": "string", "description": "W3C trace context"},
                },
                "required": ["Nats-Msg-Id"],
            },
            "payload": {
                "allOf": [
                    {"$ref": "#/components/schemas/Envelope"},
                    {
                        "type": "object",
                        "properties": {
                            "type": {"const": cls.cloud_type()},
                            "data": {"$ref": f"#/components/schemas/{name}"},
                        },
                    },
                ]
            },
        }
        channels[key] = {
            "address": cls.subject_pattern,
            "description": f"{cls.summary} Stream {_stream_of(cls)}.",
            "parameters": {param: {"description": text} for param, text in cls.subject_parameters.items()},
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
        }
        operations[f"{cls.producer}-sends-{key}"] = {
            "action": "send",
            "summary": f"{cls.producer} publishes through its transactional outbox.",
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
        }
        for consumer in cls.consumers:
            operations[f"{consumer}-receives-{key}"] = {
                "action": "receive",
                "summary": f"{consumer} applies it with an idempotent durable consumer.",
                "channel": {"$ref": f"#/channels/{key}"},
                "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
            }
    for rr in REQUEST_REPLIES:
        key = rr.name.replace(".", "-")
        schemas[rr.request.__name__] = _hoist(rr.request.model_json_schema(ref_template=_REF), schemas)
        messages[f"{key}-request"] = {
            "name": f"{rr.name}.request",
            "title": rr.request.__name__,
            "summary": rr.summary,
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {
                    "Authorization": {"type": "string", "description": "Bearer <key> of the caller"},
                    "Accept": {"type": "string", "description": "Arrow IPC stream (default), JSON or CSV"},
                    "traceparent": {"type": "string"},
                },
            },
            "payload": {"$ref": f"#/components/schemas/{rr.request.__name__}"},
        }
        messages[f"{key}-reply"] = {
            "name": f"{rr.name}.reply",
            "title": "Query reply",
            "summary": "The result, or a refusal {error, detail} with its status.",
            "contentType": "application/vnd.apache.arrow.stream",
            "headers": {
                "type": "object",
                "properties": {
                    "Maillage-Status": {"type": "string", "description": "HTTP status code of the answer"},
                    "Maillage-Suppressed-Groups": {"type": "string"},
                    "Maillage-Audit-Id": {"type": "string"},
                    "Content-Type": {"type": "string"},
                },
                "required": ["Maillage-Status"],
            },
            "payload": {"type": "string", "format": "binary"},
        }
        channels[key] = {
            "address": rr.subject_pattern,
            "description": f"{rr.summary} Core NATS request-reply (not persisted).",
            "parameters": {param: {"description": text} for param, text in rr.parameters.items()},
            "messages": {
                f"{key}-request": {"$ref": f"#/components/messages/{key}-request"},
                f"{key}-reply": {"$ref": f"#/components/messages/{key}-reply"},
            },
        }
        operations[f"{rr.server}-answers-{key}"] = {
            "action": "receive",
            "summary": f"{rr.server} answers, checking the caller's grants.",
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/{key}-request"}],
            "reply": {
                "channel": {"$ref": f"#/channels/{key}"},
                "messages": [{"$ref": f"#/channels/{key}/messages/{key}-reply"}],
            },
        }
    schemas["SensorReadingsV1"] = _hoist(SensorReadingsV1.model_json_schema(ref_template=_REF), schemas)
    messages["exchange-ingest-readings"] = {
        "name": "exchange.ingest.readings",
        "title": "SensorReadingsV1",
        "summary": (SensorReadingsV1.__doc__ or "").strip().splitlines()[0],
        "contentType": "application/json",
        "headers": {"type": "object", "properties": {"Nats-Msg-Id": {"type": "string"}}},
        "payload": {"$ref": "#/components/schemas/SensorReadingsV1"},
    }
    channels["exchange-ingest"] = {
        "address": "exchange.ingest.{siren}.{slug}",
        "description": "Sensor readings for streaming ingestion into a dataset (stream INGEST), batched into versions.",
        "parameters": {"siren": {"description": "SIREN of the territory"}, "slug": {"description": "dataset"}},
        "messages": {"exchange-ingest-readings": {"$ref": "#/components/messages/exchange-ingest-readings"}},
    }
    operations["exchange-receives-exchange-ingest"] = {
        "action": "receive",
        "summary": "exchange validates, deduplicates and appends them, acking after the new version is committed.",
        "channel": {"$ref": "#/channels/exchange-ingest"},
        "messages": [{"$ref": "#/channels/exchange-ingest/messages/exchange-ingest-readings"}],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Maillage federation events",
            "version": "1.0.0",
            "description": (
                "Events exchanged over NATS JetStream between the services of a Maillage federation. Every event is "
                "a CloudEvents 1.0 envelope published with Nats-Msg-Id = id from a transactional outbox.\n\n"
                "Streams: "
                + "; ".join(f"{s.name} ({', '.join(s.subjects)})" for s in STREAMS)
                + ". KV buckets: "
                + "; ".join(f"{b.name}: {b.description}" for b in KV_BUCKETS)
            ),
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "embedded": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "nats-server with JetStream started by `maillage up`",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": dict(sorted(schemas.items())), "messages": messages},
    }


def _stream_of(cls: type[Event]) -> str:
    return stream_for_subject(cls.subject_pattern).name


def _openapi(service: str) -> dict[str, Any]:
    import importlib

    module = importlib.import_module(f"{service}.app")
    app = module.create_app()
    document: dict[str, Any] = app.openapi()
    return document


def _dump_json(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[Path, str]:
    """Every generated file (path relative to ``contracts/``) with its content."""
    files: dict[Path, str] = {}
    files[Path("asyncapi.yaml")] = (
        "# Generated by `make contracts` from contracts/events: do not edit by hand.\n"
        + yaml.safe_dump(asyncapi_document(), sort_keys=False, allow_unicode=True, width=120)
    )
    files[Path("schemas/envelope.json")] = _dump_json(Envelope.model_json_schema())
    for cls in event_classes():
        files[Path(f"schemas/{cls.cloud_type()}.json")] = _dump_json(cls.model_json_schema())
    for service in SERVICES:
        files[Path(f"openapi/{service}.json")] = _dump_json(_openapi(service))
    return files


def write(root: Path = CONTRACTS_DIR) -> list[Path]:
    """Write the generated files under ``root``, removing stale generated ones; returns the paths written."""
    files = generate()
    for folder in ("schemas", "openapi"):
        for stale in (root / folder).glob("*.json"):
            if stale.relative_to(root) not in files:
                stale.unlink()
    written = []
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
            written.append(path)
    return written


def check(root: Path = CONTRACTS_DIR) -> list[str]:
    """Differences between the committed documents and the generated ones (empty when in sync)."""
    files = generate()
    problems = []
    for relative, content in files.items():
        path = root / relative
        if not path.exists():
            problems.append(f"{relative}: missing (run `make contracts`)")
        elif path.read_text(encoding="utf-8") != content:
            problems.append(f"{relative}: differs from the code (run `make contracts` and commit)")
    for folder in ("schemas", "openapi"):
        for existing in (root / folder).glob("*.json"):
            if existing.relative_to(root) not in files:
                problems.append(f"{existing.relative_to(root)}: no longer generated (run `make contracts`)")
    return problems
