"""Sampling, the encoder's merged Prometheus exposition, and percentiles with means."""

from __future__ import annotations

from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from orstream.common.telemetry import frame_sampler, merge_prometheus_texts, percentiles

WORKER_A = """# HELP target_info Target metadata
# TYPE target_info gauge
target_info{service_name="orstream-encoder-worker",service_instance_id="a"} 1.0
# HELP orstream_frames_in_total Frames taken in
# TYPE orstream_frames_in_total counter
orstream_frames_in_total{stage="encoder",stream="a"} 10.0
# HELP orstream_encoder_worker_restarts_total x
# TYPE orstream_encoder_worker_restarts_total counter
orstream_encoder_worker_restarts_total 1.0
"""
WORKER_B = WORKER_A.replace('instance_id="a"', 'instance_id="b"').replace(
    'stream="a"} 10.0', 'stream="b"} 7.0'
)


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_merged_workers_give_one_family_each_with_series_kept_apart_or_summed() -> None:
    merged = merge_prometheus_texts([WORKER_A, WORKER_B])
    text = merged.decode()
    assert text.count("# TYPE orstream_frames_in_total counter") == 1
    samples = _samples(merged)
    frames = {labels: v for (name, labels), v in samples.items() if name.startswith("orstream_f")}
    assert frames == {
        (("stage", "encoder"), ("stream", "a")): 10.0,
        (("stage", "encoder"), ("stream", "b")): 7.0,
    }
    assert samples[("orstream_encoder_worker_restarts_total", ())] == 2.0
    infos = [labels for (name, labels) in samples if name == "target_info"]
    assert len(infos) == 1, "one target_info per scrape target"


def test_requests_are_always_traced_and_frames_at_the_ratio() -> None:
    sampler = frame_sampler(0.25)
    ids = range(1, 2**64, 2**64 // 4000)
    server = [sampler.should_sample(None, i, "POST", SpanKind.SERVER).decision for i in ids]
    assert all(d == Decision.RECORD_AND_SAMPLE for d in server)
    frames = [sampler.should_sample(None, i, "ingest.capture").decision for i in ids]
    share = sum(d == Decision.RECORD_AND_SAMPLE for d in frames) / len(frames)
    assert 0.2 < share < 0.3
    never = frame_sampler(0.0)
    assert never.should_sample(None, 12345, "ingest.capture").decision == Decision.DROP


def test_percentiles_carry_the_mean_so_hops_add_up() -> None:
    figures = percentiles([1.0, 2.0, 3.0, 10.0])
    assert figures["n"] == 4 and figures["mean"] == 4.0 and figures["p50"] == 2.5
    assert percentiles([]) == {"n": 0}
