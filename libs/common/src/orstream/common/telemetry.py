"""OpenTelemetry set-up and per-hop latency recording.

Traces are sampled (``ORSTREAM_TRACE_SAMPLE_RATIO``, parent-based so a frame's trace is whole or
absent); metrics are recorded for every frame. :class:`HopLatency` also keeps a bounded window of
recent samples so ``/stats`` (and ``orstream bench``) can report percentiles without a metrics
backend.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable

import numpy as np
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

HOP_LATENCY_METRIC = "orstream.hop.latency"
#: Samples kept per hop for percentiles on ``/stats``: a minute at 50 fps, several streams.
HOP_WINDOW = 20_000
_configured = False


def setup_telemetry(service: str, sample_ratio: float) -> None:
    """Install tracer and meter providers for this process (once; later calls do nothing)."""
    global _configured
    if _configured:
        return
    resource = Resource.create(
        {"service.name": f"orstream-{service}", "service.namespace": "orstream"}
    )
    trace.set_tracer_provider(
        TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
    )
    metrics.set_meter_provider(MeterProvider(resource=resource))
    _configured = True


def percentiles(values: Iterable[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": …, "p95": …, "p99": …, "n": …}`` of ``values`` (empty → only ``n``)."""
    arr = np.fromiter(values, dtype=np.float64)
    out: dict[str, float] = {"n": int(arr.size)}
    if arr.size:
        for q in qs:
            out[f"p{q:g}"] = round(float(np.percentile(arr, q)), 3)
    return out


class HopLatency:
    """Latency of one hop: an OTel histogram plus a recent-sample window for ``/stats``."""

    def __init__(self, hop: str, attributes: dict[str, str] | None = None) -> None:
        self.hop = hop
        self._attributes = {"hop": hop, **(attributes or {})}
        self._histogram = metrics.get_meter("orstream").create_histogram(
            HOP_LATENCY_METRIC, unit="ms", description="Latency of one hop of a frame's path"
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
