"""OpenTelemetry: tracer and meter providers, FastAPI instrumentation, trace context in NATS headers.

Exporters are off by default; with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, spans and metrics go to that OTLP/HTTP
collector. Span attributes carry identifiers of territories, datasets and agreements, never personal data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping

from fastapi import FastAPI
from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

__all__ = ["current_traceparent", "extract_context", "inject_context", "instrument_app", "setup_telemetry"]

log = logging.getLogger(__name__)

_configured = False


def setup_telemetry(
    service_name: str,
    *,
    node_id: str = "local",
    span_processors: list[SpanProcessor] | None = None,
    metric_readers: list[MetricReader] | None = None,
) -> None:
    """Install the process-wide tracer and meter providers once (later calls add nothing)."""
    global _configured
    if _configured:
        return
    resource = Resource.create({"service.name": f"maillage-{service_name}", "service.instance.id": node_id})
    tracer_provider = TracerProvider(resource=resource)
    readers = list(metric_readers or [])
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        log.info("telemetry: exporting spans and metrics over OTLP/HTTP")
    for processor in span_processors or []:
        tracer_provider.add_span_processor(processor)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    _configured = True


def instrument_app(app: FastAPI) -> None:
    """Trace every request of ``app`` (health probes excluded)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz")


def inject_context(headers: MutableMapping[str, str], context: Context | None = None) -> MutableMapping[str, str]:
    """Write ``traceparent``/``tracestate`` of the current (or given) context into NATS headers."""
    propagate.inject(headers, context=context)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried by NATS headers (an empty context when there is none)."""
    return propagate.extract(dict(headers or {}))


def current_traceparent() -> tuple[str | None, str | None]:
    """``(traceparent, tracestate)`` of the current span, for the event envelope."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate") or None
