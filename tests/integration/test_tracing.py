"""One sampled frame is one trace across every hop, and every hop's latency is a metric.

The services run as their own processes (ingest, encoder worker, edge, metadata) and export by
OTLP/HTTP, configured only by the standard ``OTEL_*`` variables, to an in-memory OTLP receiver
in this test. A probe watches over WebRTC and answers the edge's trace requests on the ``stats``
DataChannel, so the trace ends with the viewer's receipt.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import threading
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from prometheus_client.parser import text_string_to_metric_families

from orstream.cli.main import make_token
from orstream.cli.stack import Stack, StackConfig
from orstream.common.observability import (
    EDGE_PEERS,
    EDGE_SENT,
    ENCODER_QUEUE_DELAY,
    FRAMES_IN,
    FRAMES_OUT,
    HOP_LATENCY,
    HOPS,
    SPAN_VIEWER_RECEIPT,
)
from orstream.common.telemetry import otlp_enabled
from orstream.viewer.probe import Probe

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLE_RATIO = 0.5
FPS = 25
#: The spans of one frame's trace, each the parent of the next.
CHAIN = (
    "ingest.capture",
    "ingest.publish",
    "encoder.read",
    "encoder.encode",
    "encoder.publish",
    "edge.receive",
    "edge.send",
    SPAN_VIEWER_RECEIPT,
)
SERVICE_OF = {
    "ingest": "orstream-ingest",
    "encoder": "orstream-encoder-worker",
    "edge": "orstream-signaling",
    "viewer": "orstream-signaling",  # the edge makes the receipt's span
}
PER_RENDITION_HOPS = {"encoder.encode", "encoder.publish", "edge.receive", "edge.send", "viewer"}


def _value(kv: KeyValue) -> Any:
    v = kv.value
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv) for kv in kvs}


@dataclass(frozen=True)
class SpanRecord:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]


class InMemoryOtlpReceiver:
    """An OTLP/HTTP (protobuf) endpoint on loopback that keeps what it is sent, in memory."""

    def __init__(self) -> None:
        self.spans: list[SpanRecord] = []
        #: metric name → the attribute sets of its data points, as exported.
        self.points: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    receiver._traces(ExportTraceServiceRequest.FromString(body))
                elif self.path == "/v1/metrics":
                    receiver._metrics(ExportMetricsServiceRequest.FromString(body))
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _traces(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for rs in request.resource_spans:
                service = str(_attributes(rs.resource.attributes).get("service.name", ""))
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.append(
                            SpanRecord(
                                service,
                                span.name,
                                span.trace_id.hex(),
                                span.span_id.hex(),
                                span.parent_span_id.hex(),
                                span.start_time_unix_nano,
                                span.end_time_unix_nano,
                                _attributes(span.attributes),
                            )
                        )

    def _metrics(self, request: ExportMetricsServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            self.points[metric.name].append(_attributes(point.attributes))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


Scrapes = dict[str, set[tuple[str, frozenset[tuple[str, str]]]]]


@dataclass
class Run:
    receiver: InMemoryOtlpReceiver
    stack: Stack
    prometheus: Scrapes
    probe_answered: list[tuple[str, int]]
    frames_decoded: int


def _scrape(url: str) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items()))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    receiver = InMemoryOtlpReceiver()
    tmp = tmp_path_factory.mktemp("tracing")
    config = StackConfig(
        site=f"tr{uuid.uuid4().hex[:6]}",
        source=f"testpattern:?size=640x360&fps={FPS}&context=demo",
        state_dir=tmp / "state",
        log_dir=tmp / "logs",
        ice_host_addresses=["127.0.0.1"],
        services=("ingest", "encoder", "metadata", "signaling"),
    )
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("ORSTREAM_STATE_DIR", str(config.state_dir))
            env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
            env.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
            env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "1000")
            env.setenv("ORSTREAM_TRACE_SAMPLE_RATIO", str(SAMPLE_RATIO))
            with Stack(config) as stack:
                token = make_token("surgeon", [f"{config.site}/*"])

                async def watch() -> tuple[list[tuple[str, int]], int, Scrapes]:
                    async with Probe(stack.whep_url(), token, channels=("stats",)) as probe:
                        result = await probe.measure(seconds=6.0)
                        scrapes = {  # while the peer still watches
                            name: await asyncio.to_thread(
                                _scrape, stack.stats_url(name).replace("/stats", "/metrics")
                            )
                            for name in ("ingest", "encoder", "metadata", "signaling")
                        }
                        return probe.traced_answered, result.frames_decoded, scrapes

                answered, decoded, prometheus = asyncio.run(watch())
            # Leaving the stack stopped every service, which exports what it still held.
        yield Run(receiver, stack, prometheus, answered, decoded)
    finally:
        receiver.close()


def _traces(run: Run) -> dict[str, list[SpanRecord]]:
    traces: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in run.receiver.spans:
        traces[span.trace_id].append(span)
    return traces


def test_a_sampled_frame_is_one_trace_with_a_span_per_hop_each_the_child_of_the_last(
    run: Run,
) -> None:
    assert run.frames_decoded > 100, "the probe saw too few frames to judge"
    assert run.probe_answered, "the edge never asked the probe about a sampled frame"
    whole = [
        spans
        for spans in _traces(run).values()
        if any(s.name == SPAN_VIEWER_RECEIPT for s in spans)
    ]
    assert len(whole) >= 3, f"only {len(whole)} traces reached the viewer's receipt"
    for spans in whole:
        by_name: dict[str, list[SpanRecord]] = defaultdict(list)
        for span in spans:
            by_name[span.name].append(span)
        assert {name: len(by_name[name]) for name in CHAIN} == dict.fromkeys(CHAIN, 1), (
            f"a frame's trace should hold each hop once: {sorted(s.name for s in spans)}"
        )
        chain = [by_name[name][0] for name in CHAIN]
        assert chain[0].parent_id == "", "ingest.capture starts the frame's trace"
        for parent, child in itertools.pairwise(chain):
            assert child.parent_id == parent.span_id, f"{child.name} is not {parent.name}'s child"
            assert child.start_ns >= parent.start_ns, f"{child.name} starts before {parent.name}"
            assert child.end_ns >= child.start_ns
        for span in chain:
            hop = span.name.split(".")[0]
            assert span.service == SERVICE_OF["viewer" if hop == "viewer" else hop], span
        seqs = {s.attributes["orstream.seq"] for s in chain if "orstream.seq" in s.attributes}
        assert len(seqs) == 1, f"one trace, one frame: seqs {seqs}"
        receipt = chain[-1]
        assert receipt.attributes["orstream.role"] == "surgeon"
        assert 0 < receipt.attributes["orstream.glass_to_glass_ms"] < 1000
        # The trace spans the frame's whole path: capture → the probe decoded it.
        assert receipt.end_ns - chain[0].start_ns == pytest.approx(
            receipt.attributes["orstream.glass_to_glass_ms"] * 1e6, abs=2e6
        )


def test_frames_are_sampled_at_the_configured_ratio_and_the_rest_leave_no_spans(run: Run) -> None:
    traces = _traces(run)
    frame_traces = [t for t in traces.values() if any(s.name == "ingest.capture" for s in t)]
    seqs = [
        s.attributes["orstream.seq"] for t in frame_traces for s in t if s.name == "ingest.capture"
    ]
    captured = max(seqs) - min(seqs) + 1  # frames ingest made while traces were kept
    ratio = len(frame_traces) / captured
    assert 0.3 < ratio < 0.7, f"{len(frame_traces)} of ~{captured} frames traced at 0.5"
    hop_spans = {"encoder.read", "edge.receive", "edge.send", SPAN_VIEWER_RECEIPT}
    orphans = [
        sorted(s.name for s in spans)
        for spans in traces.values()
        if any(s.name in hop_spans for s in spans)
        and not any(s.name == "ingest.capture" for s in spans)
    ]
    assert not orphans, f"hop spans without their frame's root: {orphans[:3]}"


def test_api_requests_and_de_identification_are_traced_too(run: Run) -> None:
    spans = run.receiver.spans
    whep = [s for s in spans if s.service == "orstream-signaling" and s.name.startswith("POST")]
    assert whep, "the WHEP offer made no span"
    assert any("/whep/" in str(s.attributes.get("http.route", "")) for s in whep)
    assert not [s for s in spans if "/metrics" in s.name or "/readyz" in s.name]
    contexts = [s for s in spans if s.name == "ingest.context"]
    assert contexts, "no context dataset was sampled (at 0.5, one a second)"
    deid = {s.parent_id: s for s in spans if s.name == "metadata.deidentify"}
    followed = [c for c in contexts if c.span_id in deid]
    assert followed, "metadata.deidentify does not continue ingest's context trace"
    assert deid[followed[0].span_id].attributes["orstream.role.student"] == "published"


def test_every_hop_latency_is_exported_with_its_attributes(run: Run) -> None:
    points = run.receiver.points[HOP_LATENCY]
    site = run.stack.config.site
    for hop in HOPS:
        mine = [p for p in points if p.get("hop") == hop and p.get("site") == site]
        assert mine, f"no {HOP_LATENCY} points for hop {hop}"
        point = mine[0]
        assert point["room"] == "or1" and point["stream"] == run.stack.stream.stream, point
        if hop in PER_RENDITION_HOPS:
            assert point["rendition"] == "src", point
    for name in (FRAMES_IN, FRAMES_OUT, ENCODER_QUEUE_DELAY, EDGE_PEERS, EDGE_SENT):
        assert any(p.get("site") == site for p in run.receiver.points[name]), name
    stages = {p["stage"] for p in run.receiver.points[FRAMES_OUT] if p.get("site") == site}
    assert stages == {"ingest", "encoder", "edge"}


def test_the_prometheus_endpoints_serve_the_same_metrics(run: Run) -> None:
    def hops(service: str) -> set[str]:
        return {
            dict(labels)["hop"]
            for name, labels in run.prometheus[service]
            if name == "orstream_hop_latency_milliseconds_bucket"
        }

    assert hops("ingest") == {"ingest.capture", "ingest.publish"}
    # The encoder's figures live in its worker process; the replica's /metrics merges them.
    assert hops("encoder") >= {"encoder.read", "encoder.encode", "encoder.publish"}
    # (edge.send.peer10 needs ten peers)
    assert hops("signaling") >= {"edge.receive", "edge.send", "viewer"}
    assert "metadata" in hops("metadata")
    peers = [
        dict(labels)
        for name, labels in run.prometheus["signaling"]
        if name == "orstream_edge_peers"
    ]
    assert peers and {p["rendition"] for p in peers} == {"src"}
    names = {name for samples in run.prometheus.values() for name, _ in samples}
    assert {
        "orstream_frames_in_total",
        "orstream_frames_out_total",
        "orstream_edge_sent_bytes_total",
        "orstream_keyframe_requests_total",
        "orstream_encoder_queue_delay_milliseconds_bucket",
    } <= names


def test_otlp_export_follows_the_standard_variables() -> None:
    assert not otlp_enabled("traces", {})
    assert otlp_enabled("traces", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert otlp_enabled("metrics", {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4318"})
    assert not otlp_enabled(
        "metrics", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_METRICS_EXPORTER": "none"}
    )
