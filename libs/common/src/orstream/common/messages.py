"""Wire messages between the services, each a small typed struct with its encoding beside it.

Per-frame messages stay cheap to decode: a raw-frame notification is a msgpack array, and an
encoded access unit travels as raw bytes with its facts in NATS headers, so no hop parses JSON
per frame. Registry descriptors change rarely and are JSON, readable with ``nats kv get``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

import msgspec

TRACEPARENT = "traceparent"
HDR_SEQ = "Orstream-Seq"
HDR_PTS = "Orstream-Pts"
HDR_KEY = "Orstream-Key"
HDR_CODEC = "Orstream-Codec"
HDR_CAPTURE_NS = "Orstream-Capture-Ns"
HDR_NOTIFIED_NS = "Orstream-Notified-Ns"
HDR_PUBLISHED_NS = "Orstream-Published-Ns"
HDR_STREAM = "Orstream-Stream"
HDR_RTP_TS = "Orstream-Rtp-Ts"
HDR_FLOW = "Orstream-Flow"
HDR_CONTENT_TYPE = "Content-Type"
HDR_SOURCE = "Orstream-Source"
HDR_VIEW = "Orstream-View"
HDR_PATIENT = "Orstream-Patient"
#: ``meta.in`` payloads: a DICOM Part 10 stream (preamble, ``DICM``, group 0002, dataset).
DICOM_PART10 = "application/dicom"
#: ``meta.role.<role>`` payloads: one dataset in the DICOM JSON Model (PS3.18 F.2).
DICOM_JSON = "application/dicom+json"


class MessageError(ValueError):
    """A message on the bus did not decode; the receiver drops it and counts it."""


class FrameReady(msgspec.Struct, array_like=True, frozen=True):
    """``.frame``: ingest wrote frame ``seq`` into ``slot`` of ring ``ring``."""

    ring: str
    slot: int
    seq: int
    width: int
    height: int
    pix_fmt: str
    capture_ns: int
    #: Wall clock when ingest published this notification (end of the ingest hop).
    notified_ns: int

    def encode(self) -> bytes:
        return _FRAME_ENCODER.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> FrameReady:
        try:
            return _FRAME_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            raise MessageError(f"malformed frame notification: {exc}") from exc


_FRAME_ENCODER = msgspec.msgpack.Encoder()
_FRAME_DECODER = msgspec.msgpack.Decoder(FrameReady)


class AccessUnitMeta(msgspec.Struct, frozen=True):
    """Facts about one encoded access unit (``.enc.<rendition>``), carried in NATS headers."""

    seq: int
    #: Presentation time in 90 kHz units (RTP video clock), derived from capture time.
    pts: int
    key: bool
    codec: str
    capture_ns: int
    notified_ns: int
    published_ns: int
    traceparent: str | None = None

    def to_headers(self) -> dict[str, str]:
        headers = {
            HDR_SEQ: str(self.seq),
            HDR_PTS: str(self.pts),
            HDR_KEY: "1" if self.key else "0",
            HDR_CODEC: self.codec,
            HDR_CAPTURE_NS: str(self.capture_ns),
            HDR_NOTIFIED_NS: str(self.notified_ns),
            HDR_PUBLISHED_NS: str(self.published_ns),
        }
        if self.traceparent:
            headers[TRACEPARENT] = self.traceparent
        return headers

    @classmethod
    def from_headers(cls, headers: dict[str, str] | None) -> AccessUnitMeta:
        if not headers:
            raise MessageError("access unit without headers")
        try:
            return cls(
                seq=int(headers[HDR_SEQ]),
                pts=int(headers[HDR_PTS]),
                key=headers[HDR_KEY] == "1",
                codec=headers[HDR_CODEC],
                capture_ns=int(headers[HDR_CAPTURE_NS]),
                notified_ns=int(headers[HDR_NOTIFIED_NS]),
                published_ns=int(headers[HDR_PUBLISHED_NS]),
                traceparent=headers.get(TRACEPARENT),
            )
        except (KeyError, ValueError) as exc:
            raise MessageError(f"malformed access unit headers: {exc!r}") from exc


class ContextMeta(msgspec.Struct, frozen=True):
    """Facts about one ``meta.in`` dataset, carried in NATS headers beside the Part 10 bytes.

    ``rtp_ts`` and ``seq`` tie a DICOM-RTV metadata grain to the video frame it describes (same
    90 kHz RTP clock; ``seq`` is the frame's seq in the ring, when that frame was received).
    """

    stream: str
    capture_ns: int
    rtp_ts: int | None = None
    seq: int | None = None
    flow: str = ""

    def to_headers(self) -> dict[str, str]:
        headers = {
            HDR_CONTENT_TYPE: DICOM_PART10,
            HDR_STREAM: self.stream,
            HDR_CAPTURE_NS: str(self.capture_ns),
        }
        if self.rtp_ts is not None:
            headers[HDR_RTP_TS] = str(self.rtp_ts)
        if self.seq is not None:
            headers[HDR_SEQ] = str(self.seq)
        if self.flow:
            headers[HDR_FLOW] = self.flow
        return headers

    @classmethod
    def from_headers(cls, headers: dict[str, str] | None) -> ContextMeta:
        if not headers or headers.get(HDR_CONTENT_TYPE) != DICOM_PART10:
            raise MessageError("context without a DICOM Part 10 content type")
        try:
            rtp_ts = headers.get(HDR_RTP_TS)
            seq = headers.get(HDR_SEQ)
            return cls(
                stream=headers[HDR_STREAM],
                capture_ns=int(headers[HDR_CAPTURE_NS]),
                rtp_ts=int(rtp_ts) if rtp_ts is not None else None,
                seq=int(seq) if seq is not None else None,
                flow=headers.get(HDR_FLOW, ""),
            )
        except (KeyError, ValueError) as exc:
            raise MessageError(f"malformed context headers: {exc!r}") from exc


class RoleMeta(msgspec.Struct, frozen=True):
    """Facts about one ``meta.role.<role>`` dataset, in NATS headers beside its DICOM JSON.

    ``source`` says where the context came from (``rtv``, ``file``, ``worklist``, ``rest``),
    ``view`` which view of it this is (``identified``, ``technical`` or a PS3.15 profile).
    ``patient`` is the keyed pseudonym of the patient (the de-identified Patient ID), the same
    for every role: the edge names it in audit records without ever holding the identity.
    """

    source: str
    stream: str
    capture_ns: int
    published_ns: int
    view: str
    patient: str = ""

    def to_headers(self) -> dict[str, str]:
        return {
            HDR_CONTENT_TYPE: DICOM_JSON,
            HDR_SOURCE: self.source,
            HDR_STREAM: self.stream,
            HDR_CAPTURE_NS: str(self.capture_ns),
            HDR_PUBLISHED_NS: str(self.published_ns),
            HDR_VIEW: self.view,
            HDR_PATIENT: self.patient,
        }

    @classmethod
    def from_headers(cls, headers: dict[str, str] | None) -> RoleMeta:
        if not headers or headers.get(HDR_CONTENT_TYPE) != DICOM_JSON:
            raise MessageError("role metadata without a DICOM JSON content type")
        try:
            return cls(
                source=headers[HDR_SOURCE],
                stream=headers.get(HDR_STREAM, ""),
                capture_ns=int(headers[HDR_CAPTURE_NS]),
                published_ns=int(headers[HDR_PUBLISHED_NS]),
                view=headers[HDR_VIEW],
                patient=headers.get(HDR_PATIENT, ""),
            )
        except (KeyError, ValueError) as exc:
            raise MessageError(f"malformed role metadata headers: {exc!r}") from exc


class JsonMessage(msgspec.Struct):
    """A message that changes rarely (registry entries, leases, interest): JSON, readable with
    ``nats kv get`` / ``nats sub``."""

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        try:
            return msgspec.json.decode(data, type=cls)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise MessageError(f"malformed {cls.__name__}: {exc}") from exc


class StreamState(StrEnum):
    STARTING = "starting"
    LIVE = "live"
    STALLED = "stalled"
    STOPPED = "stopped"


class StreamDescriptor(JsonMessage, kw_only=True):
    """A stream's entry in the registry (JetStream KV ``orstream-streams``)."""

    site: str
    room: str
    stream: str
    source: str
    width: int
    height: int
    fps: float
    pix_fmt: str
    ring: str
    bit_depth: int = 8
    colorimetry: str = ""
    codec: str = "h264"
    renditions: list[str] = msgspec.field(default_factory=lambda: ["src"])
    state: StreamState = StreamState.STARTING
    label: str = ""
    modality: str = ""
    study_uid: str = ""
    series_uid: str = ""
    owner: str = ""
    #: Why the stream is stalled or stopped, for the operator (no patient data).
    reason: str = ""
    updated_ns: int = 0


class Interest(JsonMessage):
    """``.interest``: the renditions one watcher (an edge) has peers on, repeated every interval.

    ``renditions`` maps a rendition to the highest bitrate its peers report they can take (REMB,
    bit/s), 0 when none has said. An empty map withdraws the watcher at once; otherwise it holds
    for ``ttl_ms`` (the sender sets it to a few of its intervals), so a watcher that vanishes
    stops costing CPU within seconds.
    """

    watcher: str
    renditions: dict[str, int]
    ttl_ms: int = 3000


class EncoderClaim(JsonMessage, kw_only=True):
    """``claim.<site>.<room>.<stream>`` in the encoder bucket: who encodes the stream, and how.

    The lease is the entry's revision: the owner rewrites it every heartbeat, and a claim whose
    revision has not moved for the lease time is free for another replica to take.
    """

    replica: str
    host: str = ""
    codecs: dict[str, str] = msgspec.field(default_factory=dict)
    #: Each rendition's configured bitrate (bit/s): the edge's ladder for choosing one per peer.
    bitrates: dict[str, int] = msgspec.field(default_factory=dict)
    #: Set while the stream's worker refuses (e.g. an encoder that does not open), for operators.
    reason: str = ""
    renewed_ns: int = 0


class ReplicaPresence(JsonMessage, kw_only=True):
    """``replica.<site>.<replica>``: an encoder replica is alive (renewed by heartbeat), and
    which streams it could take (its host's rings, its rooms, its limit)."""

    replica: str
    host: str = ""
    rooms: list[str] = msgspec.field(default_factory=lambda: ["*"])
    max_streams: int = 0
    streams: int = 0
    renewed_ns: int = 0

    @property
    def scope(self) -> tuple[str, tuple[str, ...]]:
        """Replicas with the same scope compete for the same streams and share them evenly."""
        return self.host, tuple(sorted(self.rooms))

    def has_room(self) -> bool:
        return self.max_streams == 0 or self.streams < self.max_streams
