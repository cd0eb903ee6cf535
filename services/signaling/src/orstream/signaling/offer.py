"""What the edge accepts as a WHEP offer, checked before any peer connection exists.

aiortc parses leniently and fails later (a missing DTLS fingerprint only surfaces as an assertion
in a background task), so a viewer's offer is validated up front: it parses, has one video m-line
per stream it asks for (at most ``max_video``), and every m-line carries ICE credentials and a
DTLS fingerprint.
"""

from __future__ import annotations

from aiortc import sdp


class OfferRejected(ValueError):
    """The SDP offer is malformed or cannot be answered; the reason goes back as a 400."""


def validate_offer(text: str, max_video: int = 1) -> sdp.SessionDescription:
    if not text.startswith("v=0"):
        raise OfferRejected("not an SDP offer: it must start with 'v=0'")
    try:
        description = sdp.SessionDescription.parse(text)
    except Exception as exc:  # the parser raises ValueError, KeyError, IndexError…
        raise OfferRejected(f"malformed SDP offer: {exc!r}") from exc
    video = [m for m in description.media if m.kind == "video"]
    if not 1 <= len(video) <= max_video:
        wanted = "exactly one video m-line" if max_video == 1 else f"1 to {max_video} video m-lines"
        raise OfferRejected(f"offer must have {wanted}, has {len(video)}")
    for media in description.media:
        if media.dtls is None or not media.dtls.fingerprints:
            raise OfferRejected(f"{media.kind} m-line has no DTLS fingerprint (a=fingerprint)")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise OfferRejected(f"{media.kind} m-line has no ICE credentials (a=ice-ufrag/ice-pwd)")
    return description
