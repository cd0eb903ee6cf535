"""The names of orstream's telemetry: spans, hops and metrics, in one place.

Services record under these names, ``orstream latency`` and ``orstream bench latency`` report
them, and the Grafana dashboard in ``deploy/observability`` queries them (a test checks that
every metric the dashboard queries is really exported).

A frame's path is cut into hops that follow each other without overlap, so their latencies add
up to the glass-to-glass latency::

    capture ─ingest.capture─► in ring ─ingest.publish─► notified ─encoder.read─► read
      ─encoder.encode─► encoded ─encoder.publish─► published ─edge.receive─► at the edge
      ─edge.send─► last RTP packet sent ─viewer─► decoded / displayed by the peer

One sampled frame is one trace with a span per hop, each the child of the one before (the
viewer's span is ``viewer.receipt``, made by the edge from the peer's receipt).
"""

from __future__ import annotations

from typing import Final

#: The hops of a frame's path, in order; the values of the ``hop`` attribute.
HOP_INGEST_CAPTURE: Final = "ingest.capture"
HOP_INGEST_PUBLISH: Final = "ingest.publish"
HOP_ENCODER_READ: Final = "encoder.read"
HOP_ENCODER_ENCODE: Final = "encoder.encode"
HOP_ENCODER_PUBLISH: Final = "encoder.publish"
HOP_EDGE_RECEIVE: Final = "edge.receive"
HOP_EDGE_SEND: Final = "edge.send"
HOP_VIEWER: Final = "viewer"
HOPS: Final = (
    HOP_INGEST_CAPTURE,
    HOP_INGEST_PUBLISH,
    HOP_ENCODER_READ,
    HOP_ENCODER_ENCODE,
    HOP_ENCODER_PUBLISH,
    HOP_EDGE_RECEIVE,
    HOP_EDGE_SEND,
    HOP_VIEWER,
)
#: Recorded beside the path's hops (not part of the sum): the encoder's queue delay (notified →
#: taken, inside ``encoder.read``), the AU to the 10th peer (the budget's figure; ``edge.send``
#: is to the last peer) and the metadata service's de-identification.
HOP_ENCODER_QUEUE: Final = "encoder.queue"
HOP_EDGE_SEND_PEER10: Final = "edge.send.peer10"
HOP_METADATA: Final = "metadata"

#: Span names: one per hop, and the viewer's receipt.
SPAN_VIEWER_RECEIPT: Final = "viewer.receipt"

# Metric names (OpenTelemetry). On the Prometheus endpoint dots become underscores, the unit
# is appended (ms → ``_milliseconds``, By → ``_bytes``) and counters end in ``_total``.
#: Histogram, ms; attributes hop, site, room, stream, rendition (per-rendition hops only).
HOP_LATENCY: Final = "orstream.hop.latency"
#: Counters; attributes stage (ingest, encoder, edge), site, room, stream[, rendition].
FRAMES_IN: Final = "orstream.frames.in"
FRAMES_OUT: Final = "orstream.frames.out"
#: … plus ``reason``.
FRAMES_DROPPED: Final = "orstream.frames.dropped"
#: Histogram, ms: a frame notified → the encoder thread took it; site, room, stream.
ENCODER_QUEUE_DELAY: Final = "orstream.encoder.queue.delay"
#: Gauge: peers watching; site, room, stream, rendition.
EDGE_PEERS: Final = "orstream.edge.peers"
#: Counter, bytes of media sent to peers; site, room, stream, rendition.
EDGE_SENT: Final = "orstream.edge.sent"
#: Counter: keyframe requests; stage (edge: asked of the encoder; encoder: forced IDRs),
#: site, room, stream, and at the edge outcome (sent, coalesced).
KEYFRAME_REQUESTS: Final = "orstream.keyframe.requests"
#: Counter: contexts the de-identification engine refused or failed on; site, room, reason
#: (rejected, unreadable, withheld) and for a withheld view the role.
DEID_ERRORS: Final = "orstream.metadata.deid.errors"
#: Counter: requests refused by authentication or authorization; status (401, 403, 429), site,
#: role and action (authenticate, watch). The reason is in the log and the audit trail only.
AUTH_DENIALS: Final = "orstream.edge.auth.denials"
