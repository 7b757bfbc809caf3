"""OpenTelemetry traces of a job's path: the API request (FastAPI's native server and operation spans, on once
a tracer provider is set), its enqueue, the Celery task, the job's run and its engine stages, as spans of one
trace.

Off unless the standard variables ask for it (`Settings.trace_exporters`): ``OTEL_TRACES_EXPORTER`` (``otlp``,
``console``; ``none``) or an ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``; ``OTEL_SDK_DISABLED=true`` turns it off.
The SDK and its exporter read the rest of their own variables (endpoint, headers, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``). When off, only the API package is
loaded and every span is a no-op.

The context crosses processes as W3C ``traceparent``/``tracestate``: stored in the job record at its enqueue
(a Celery message is a turn of the fair queue, not a job, and a re-queue sends a new message from a reaper,
so the record is what a run knows its job by) and copied into each of its task messages' headers.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

log = logging.getLogger("stillmoving.tracing")
_provider: Any = None  # the SDK's TracerProvider once `setup` made one in this process


def setup(settings, service_name: str) -> bool:
    """Install the SDK's tracer provider with the exporters the settings name (once per process); False (and
    nothing loaded) when tracing is off."""
    global _provider
    exporters = settings.trace_exporters()
    if _provider is not None or not exporters:
        return _provider is not None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))  # OTEL_SERVICE_NAME wins when set
    provider = TracerProvider(resource=resource)
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:  # console (Settings refuses any other name)
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing on: %s exporter(s), service %s", ",".join(exporters), resource.attributes.get("service.name"))
    return True


def shutdown() -> None:
    """Export what is still buffered (a pool process about to exit)."""
    if _provider is not None:
        _provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer("stillmoving")


def carrier() -> dict[str, str]:
    """The current span's context as W3C headers (empty when no span is recording and none came in)."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


def parent(headers: Mapping[str, Any] | None) -> otel_context.Context:
    """The context that W3C `headers` (a record's or a message's) carry; the empty one without them."""
    return propagate.extract({k: v for k, v in (headers or {}).items() if isinstance(v, str)},
                             context=otel_context.Context())


@contextmanager
def span(name: str, kind: trace.SpanKind = trace.SpanKind.INTERNAL, attributes: dict[str, Any] | None = None,
         context: otel_context.Context | None = None, links: list[trace.Link] | None = None) -> Iterator[trace.Span]:
    """A span, current inside; `context`: its parent (default: the current span). None-valued attributes are
    left out; an exception escaping it is recorded and marks it failed."""
    kept = {k: v for k, v in (attributes or {}).items() if v is not None}
    with tracer().start_as_current_span(name, context=context, kind=kind, links=links, attributes=kept) as current:
        yield current


def link_to(span_context: trace.SpanContext) -> list[trace.Link]:
    return [trace.Link(span_context)] if span_context.is_valid else []
