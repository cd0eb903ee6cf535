"""OpenTelemetry set-up and per-hop latency recording.

Frames' traces are sampled (``ORSTREAM_TRACE_SAMPLE_RATIO``, parent-based so a frame's trace is
whole or absent); requests to a service are always traced; metrics are recorded for every
frame. Metrics are always readable on the service's ``/metrics`` (Prometheus text); both signals
go out by OTLP/HTTP when the standard ``OTEL_*`` variables name an endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or the per-signal ones) and the signal's exporter is not
``none``. :class:`HopLatency` also keeps a bounded window of recent samples so ``/stats`` (and
``orstream bench``) can report percentiles without a metrics backend.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from orstream.common.observability import (
    ENCODER_QUEUE_DELAY,
    FRAMES_DROPPED,
    FRAMES_IN,
    FRAMES_OUT,
    HOP_ENCODER_QUEUE,
    HOP_LATENCY,
)

log = logging.getLogger(__name__)

#: Samples kept per hop for percentiles on ``/stats``: a minute at 50 fps, several streams.
HOP_WINDOW = 20_000
#: Bucket bounds (ms) of the latency histograms: most hops take well under 10 ms, so the
#: SDK's default bounds (0, 5, 10, 25, …) would put nearly everything in two buckets.
LATENCY_BUCKETS_MS = (
    0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0,
    250.0, 500.0, 1000.0, 2500.0,
)  # fmt: skip
#: The service's Prometheus registry, served on ``/metrics``.
PROMETHEUS_REGISTRY = CollectorRegistry(auto_describe=True)
#: How long the last export at shutdown may take, per signal.
SHUTDOWN_EXPORT_MS = 2000
_tracer_provider: TracerProvider | None = None
_meter_provider: MeterProvider | None = None


def otlp_enabled(signal: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``signal`` (``traces``, ``metrics``) goes out by OTLP, per the ``OTEL_*``
    variables: an endpoint is named, and ``OTEL_<SIGNAL>_EXPORTER`` is not ``none``."""
    exporter = environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp")
    if "otlp" not in {part.strip() for part in exporter.split(",")}:
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


class _RequestsOrRatio(Sampler):
    """A new trace: always for a request to the service (a server span, rare and worth
    seeing), otherwise (frames, datasets) with probability ``ratio``."""

    def __init__(self, ratio: float) -> None:
        self._requests = ALWAYS_ON
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        sampler = self._requests if kind == SpanKind.SERVER else self._ratio
        return sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"RequestsOrRatio{{{self._ratio.rate}}}"


def frame_sampler(ratio: float) -> Sampler:
    """Parent-based, so a frame's trace is whole or absent across every service."""
    return ParentBased(_RequestsOrRatio(ratio))


def setup_telemetry(service: str, sample_ratio: float) -> None:
    """Install tracer and meter providers for this process (once; later calls do nothing)."""
    global _tracer_provider, _meter_provider
    if _tracer_provider is not None:
        return
    resource = Resource.create(
        {"service.name": f"orstream-{service}", "service.namespace": "orstream"}
    )
    tracer_provider = TracerProvider(resource=resource, sampler=frame_sampler(sample_ratio))
    if otlp_enabled("traces"):
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    readers: list[MetricReader] = [PrometheusMetricReader(registry=PROMETHEUS_REGISTRY)]
    if otlp_enabled("metrics"):
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    latency_buckets = ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_MS)
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=readers,
        views=[
            View(instrument_name=HOP_LATENCY, aggregation=latency_buckets),
            View(instrument_name=ENCODER_QUEUE_DELAY, aggregation=latency_buckets),
        ],
    )
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    _tracer_provider, _meter_provider = tracer_provider, meter_provider


def shutdown_telemetry() -> None:
    """Export what is still buffered (the last spans and metrics) before the process exits,
    within a bound: an unreachable collector must not hold up a stop past its grace period."""
    try:
        if _tracer_provider is not None:
            _tracer_provider.force_flush(SHUTDOWN_EXPORT_MS)
            _tracer_provider.shutdown()
        if _meter_provider is not None:
            _meter_provider.shutdown(timeout_millis=SHUTDOWN_EXPORT_MS)
    except Exception as exc:
        log.warning("telemetry export at shutdown failed: %s", exc)


def prometheus_text() -> bytes:
    """This process's metrics in the Prometheus text format."""
    return generate_latest(PROMETHEUS_REGISTRY)


def percentiles(values: Iterable[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float]:
    """``{"n", "mean", "p50", "p95", "p99"}`` of ``values`` (empty → only ``n``); means add up
    along a path where percentiles do not."""
    arr = np.fromiter(values, dtype=np.float64)
    out: dict[str, float] = {"n": int(arr.size)}
    if arr.size:
        out["mean"] = round(float(arr.mean()), 3)
        for q in qs:
            out[f"p{q:g}"] = round(float(np.percentile(arr, q)), 3)
    return out


class HopLatency:
    """Latency of one hop: an OTel histogram plus a recent-sample window for ``/stats``."""

    METRIC = HOP_LATENCY
    DESCRIPTION = "Latency of one hop of a frame's path"

    def __init__(self, hop: str, attributes: Mapping[str, str] | None = None) -> None:
        self.hop = hop
        self._attributes = {"hop": hop, **(attributes or {})}
        self._histogram = metrics.get_meter("orstream").create_histogram(
            self.METRIC, unit="ms", description=self.DESCRIPTION
        )
        self._window: deque[tuple[int, float]] = deque(maxlen=HOP_WINDOW)
        self._lock = threading.Lock()

    def record(self, latency_ms: float, capture_ns: int | None = None) -> None:
        self._histogram.record(latency_ms, self._attributes)
        with self._lock:
            self._window.append((capture_ns or time.time_ns(), latency_ms))

    def summary(self, since_ns: int = 0) -> dict[str, float]:
        with self._lock:
            samples = [ms for ns, ms in self._window if ns >= since_ns]
        return percentiles(samples)


class QueueDelay(HopLatency):
    """The encoder's queue delay: a frame notified → the encode thread took it."""

    HOP = HOP_ENCODER_QUEUE
    METRIC = ENCODER_QUEUE_DELAY
    DESCRIPTION = "A frame notified → the encoder took it"

    def __init__(self, attributes: Mapping[str, str]) -> None:
        super().__init__(self.HOP, attributes)


class Counters:
    """Named monotonic counters, mirrored to OTel and readable on ``/stats``."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._meter = metrics.get_meter("orstream")
        self._values: dict[str, int] = {}
        self._instruments: dict[str, metrics.Counter] = {}
        self._lock = threading.Lock()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount
            counter = self._instruments.get(name)
            if counter is None:
                counter = self._meter.create_counter(f"{self._prefix}.{name}")
                self._instruments[name] = counter
        counter.add(amount)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class FrameCounts:
    """Frames in, out and dropped at one stage of one stream: OTel counters, every frame."""

    def __init__(self, stage: str, attributes: Mapping[str, str]) -> None:
        meter = metrics.get_meter("orstream")
        self._attributes = {"stage": stage, **attributes}
        self._in = meter.create_counter(FRAMES_IN, unit="{frame}", description="Frames taken in")
        self._out = meter.create_counter(FRAMES_OUT, unit="{frame}", description="Frames passed on")
        self._dropped = meter.create_counter(
            FRAMES_DROPPED, unit="{frame}", description="Frames lost or refused, by reason"
        )

    def received(self, count: int = 1) -> None:
        self._in.add(count, self._attributes)

    def sent(self, count: int = 1) -> None:
        self._out.add(count, self._attributes)

    def dropped(self, reason: str, count: int = 1) -> None:
        self._dropped.add(count, {**self._attributes, "reason": reason})


def merge_prometheus_texts(texts: Iterable[str]) -> bytes:
    """Several processes' metrics as one exposition: one family per name, and series with the
    same labels summed (``target_info``, which describes the process, and info series: only
    the first process's).

    Concatenating the texts would repeat families, which Prometheus refuses.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            series = values.setdefault(family.name, {})
            if family.name == "target_info" and series:
                continue
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = series.get(key)
                if seen is None:
                    series[key] = sample
                elif merged.type != "info":
                    series[key] = seen._replace(value=seen.value + sample.value)
    for name, family in families.items():
        family.samples = list(values[name].values())

    class _Merged(Collector):
        def collect(self) -> Iterable[Metric]:
            return families.values()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)
