"""TURN: credentials a real coturn accepts (and refuses), two aiortc peers talking only through
its relay, and the two renderings browsers read (RTCIceServer JSON, WHEP ``Link`` headers)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from aiortc import RTCIceTransportPolicy, RTCPeerConnection
from pydantic import ValidationError

from orstream.signaling.ice import configuration
from orstream.signaling.settings import SignalingSettings
from orstream.signaling.turn import (
    IceServer,
    edge_ice_servers,
    ice_servers_for,
    link_header_values,
    rtc_ice_servers_json,
    turn_credential,
    turn_username,
)

TURNSERVER = shutil.which("turnserver")
needs_coturn = pytest.mark.skipif(
    TURNSERVER is None,
    reason="coturn's turnserver is not installed (apt-get install coturn; .ci/run installs it)",
)
REALM = "orstream.test"
NOW = 1_700_000_000
STUN_MAGIC_COOKIE = 0x2112A442


# --- credentials and renderings ------------------------------------------------------------


def test_credential_is_base64_hmac_sha1_of_the_username() -> None:
    username = turn_username("alice", NOW)
    assert username == "1700000000:alice"
    independent = base64.b64encode(
        hmac.new(b"north-theatre", b"1700000000:alice", hashlib.sha1).digest()
    ).decode()
    assert turn_credential("north-theatre", username) == independent
    # The same value from `openssl dgst -sha1 -hmac north-theatre -binary | base64`.
    assert independent == "TZL8F/M26o7fgqIvez63MXZrdOw="


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        ("", "is empty or has control characters"),
        ("alice\r\nLink: <evil>", "is empty or has control characters"),
        ("x" * 600, "longer than 512 bytes"),
    ],
)
def test_unusable_users_are_refused(user: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        turn_username(user, NOW)


def _settings(**kw: object) -> SignalingSettings:
    args: dict[str, object] = {
        "stun_urls": ["stun:turn.or.example:3478"],
        "turn_urls": ["turn:turn.or.example:3478?transport=udp", "turns:turn.or.example:5349"],
        "turn_secret": "north-theatre",
        "turn_ttl_s": 3600,
    }
    args.update(kw)
    return SignalingSettings(**args)  # type: ignore[arg-type]


def test_stun_without_credentials_turn_with_the_sessions_credential() -> None:
    stun_server, turn_server = ice_servers_for(_settings(), "alice", NOW + 600, now_s=NOW)
    assert stun_server == IceServer(urls=("stun:turn.or.example:3478",))
    assert turn_server.urls == (
        "turn:turn.or.example:3478?transport=udp",
        "turns:turn.or.example:5349",
    )
    assert turn_server.username == f"{NOW + 600}:alice"
    assert turn_server.credential == turn_credential("north-theatre", f"{NOW + 600}:alice")


def test_credential_expires_with_the_token_but_never_beyond_the_ttl() -> None:
    (_, turn_server) = ice_servers_for(_settings(), "alice", NOW + 86_400 * 30, now_s=NOW)
    assert turn_server.username == f"{NOW + 3600}:alice"


def test_no_servers_configured_gives_an_empty_list() -> None:
    settings = SignalingSettings(stun_urls=[], turn_urls=[], turn_secret=None)
    assert ice_servers_for(settings, "alice", NOW + 600, now_s=NOW) == []


def test_browser_json_is_an_rtc_ice_servers_list() -> None:
    rendered = rtc_ice_servers_json(ice_servers_for(_settings(), "alice", NOW + 60, now_s=NOW))
    username = f"{NOW + 60}:alice"
    assert rendered == [
        {"urls": ["stun:turn.or.example:3478"]},
        {
            "urls": ["turn:turn.or.example:3478?transport=udp", "turns:turn.or.example:5349"],
            "username": username,
            "credential": turn_credential("north-theatre", username),
        },
    ]
    assert json.loads(json.dumps(rendered)) == rendered


def test_whep_link_headers_one_per_url() -> None:
    servers = ice_servers_for(_settings(), "alice", NOW + 60, now_s=NOW)
    username = f"{NOW + 60}:alice"
    credential = turn_credential("north-theatre", username)
    assert link_header_values(servers) == [
        '<stun:turn.or.example:3478>; rel="ice-server"',
        f'<turn:turn.or.example:3478?transport=udp>; rel="ice-server"; username="{username}"; '
        f'credential="{credential}"; credential-type="password"',
        f'<turns:turn.or.example:5349>; rel="ice-server"; username="{username}"; '
        f'credential="{credential}"; credential-type="password"',
    ]


def test_link_header_quotes_what_a_quoted_string_must_escape() -> None:
    server = IceServer(urls=("turn:t:3478",), username='1:a"b\\c', credential="x")
    (value,) = link_header_values([server])
    assert 'username="1:a\\"b\\\\c"' in value


def test_edge_configuration_carries_turn_credentials_and_relay_policy() -> None:
    settings = _settings(
        ice_servers=["stun:turn.or.example:3478", "turn:turn.or.example:3478?transport=tcp"],
        edge_id="edge-a",
    )
    config = configuration(edge_ice_servers(settings, NOW + 60, now_s=NOW), relay_only=True)
    assert config.iceTransportPolicy is RTCIceTransportPolicy.RELAY
    stun_server, turn_server = config.iceServers
    assert (stun_server.urls, stun_server.username) == (["stun:turn.or.example:3478"], None)
    assert turn_server.urls == ["turn:turn.or.example:3478?transport=tcp"]
    assert turn_server.username == f"{NOW + 60}:edge-a"
    assert turn_server.credential == turn_credential("north-theatre", f"{NOW + 60}:edge-a")
    # Plain URLs still work, as before.
    plain = configuration(["stun:turn.or.example:3478"])
    assert plain.iceTransportPolicy is RTCIceTransportPolicy.ALL
    assert [s.urls for s in plain.iceServers] == ["stun:turn.or.example:3478"]


# --- settings validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"turn_urls": ["turn:turn.or.example:3478"]},
        {"ice_servers": ["turns:turn.or.example:5349"]},
    ],
)
def test_a_turn_url_without_a_secret_is_refused(kw: dict[str, list[str]]) -> None:
    with pytest.raises(ValidationError, match="ORSTREAM_TURN_SECRET is not"):
        SignalingSettings(turn_secret=None, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"stun_urls": ["turn:t:3478"]}, "stun_urls: not a STUN URL"),
        ({"turn_urls": ["stun:t:3478"]}, "turn_urls: not a TURN URL"),
        ({"turn_urls": ["turn:t:3478?transport=sctp"]}, "turn_urls: not a TURN URL"),
        ({"ice_servers": ["http://t"]}, "ice_servers: not a STUN or TURN URL"),
    ],
)
def test_malformed_urls_are_refused(kw: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(**kw)


def test_secret_comes_from_the_environment_and_is_not_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORSTREAM_TURN_SECRET", "north-theatre")
    monkeypatch.setenv("ORSTREAM_TURN_URLS", '["turn:[::1]:3478?transport=udp"]')
    settings = SignalingSettings()
    assert settings.turn_secret is not None
    assert settings.turn_secret.get_secret_value() == "north-theatre"
    assert "north-theatre" not in repr(settings)
    assert settings.turn_urls == ["turn:[::1]:3478?transport=udp"]


# --- a real coturn -------------------------------------------------------------------------


@dataclass
class Coturn:
    port: int
    secret: str
    log: Path

    @property
    def turn_url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def settings(self, secret: str | None = None) -> SignalingSettings:
        return SignalingSettings(
            turn_urls=[self.turn_url], turn_secret=secret or self.secret, turn_ttl_s=600
        )


def _free_udp_and_tcp_port() -> int:
    """A loopback port free for both UDP and TCP (coturn listens on both)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no loopback port free for both UDP and TCP")


def _stun_binding_answered(port: int) -> bool:
    """One STUN Binding request (RFC 8489) to the server; True when its success response came."""
    transaction_id = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, STUN_MAGIC_COOKIE) + transaction_id
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(request, ("127.0.0.1", port))
            response = sock.recv(2048)
        except OSError:  # timeout, or ICMP port unreachable while coturn starts
            return False
    return response[:2] == b"\x01\x01" and response[8:20] == transaction_id


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    assert TURNSERVER is not None
    workdir = tmp_path_factory.mktemp("coturn")
    server = Coturn(
        port=_free_udp_and_tcp_port(),
        secret=secrets.token_urlsafe(24),
        log=workdir / "turnserver.log",
    )
    args = [
        TURNSERVER,
        "-n",  # no config file: Debian's /etc/turnserver.conf would otherwise be read
        f"--listening-port={server.port}",
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        "--allow-loopback-peers",  # both peers' relay addresses are 127.0.0.1
        "--use-auth-secret",
        f"--static-auth-secret={server.secret}",
        f"--realm={REALM}",
        "--fingerprint",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--no-software-attribute",
        f"--userdb={workdir / 'turndb'}",
        f"--pidfile={workdir / 'turnserver.pid'}",
        "--log-file=stdout",
        "--simple-log",
        "--verbose",  # per-session lines (ALLOCATE success, usage) the tests read
    ]
    with server.log.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = time.monotonic() + 15
        while not _stun_binding_answered(server.port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"turnserver did not answer STUN:\n{server.log.read_text()[-3000:]}")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _local_candidates(pc: RTCPeerConnection) -> list[str]:
    return [
        line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=candidate:")
    ]


@needs_coturn
@pytest.mark.integration
async def test_two_relay_only_peers_exchange_a_message_through_coturn(coturn: Coturn) -> None:
    settings = coturn.settings()
    expires_at = int(time.time()) + 600
    offerer = RTCPeerConnection(
        configuration(ice_servers_for(settings, "alice", expires_at), relay_only=True)
    )
    answerer = RTCPeerConnection(
        configuration(ice_servers_for(settings, "urn:orstream:bob", expires_at), relay_only=True)
    )
    try:

        @answerer.on("datachannel")
        def on_datachannel(channel) -> None:
            channel.on("message", lambda message: channel.send(f"echo: {message}"))

        channel = offerer.createDataChannel("chat")
        opened = asyncio.Event()
        replies: asyncio.Queue[str] = asyncio.Queue(maxsize=4)
        channel.on("open", opened.set)
        channel.on("message", replies.put_nowait)

        async with asyncio.timeout(30):
            await offerer.setLocalDescription(await offerer.createOffer())
            await answerer.setRemoteDescription(offerer.localDescription)
            await answerer.setLocalDescription(await answerer.createAnswer())
            await offerer.setRemoteDescription(answerer.localDescription)
            await opened.wait()
            channel.send("through the relay")
            reply = await replies.get()

        assert reply == "echo: through the relay"
        for pc in (offerer, answerer):
            # Relay candidates only, on coturn's relay address: the one path there was.
            candidates = _local_candidates(pc)
            assert candidates and all(" 127.0.0.1 " in c and " typ relay" in c for c in candidates)
            assert pc.iceConnectionState == "completed"
    finally:
        await offerer.close()
        await answerer.close()
    log = coturn.log.read_text()
    for user in ("alice", "urn:orstream:bob"):
        assert f"user <{expires_at}:{user}>: incoming packet ALLOCATE processed, success" in log
    # Each side's relay bound a channel to the other's relay address: coturn carried the data.
    for pc in (offerer, answerer):
        (candidate,) = _local_candidates(pc)
        relay_port = candidate.split()[5]
        assert f"peer 127.0.0.1:{relay_port} lifetime updated" in log


class _RelayedProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@needs_coturn
@pytest.mark.integration
@pytest.mark.parametrize(
    ("secret", "expires_in_s", "refused"),
    [
        (None, 600, False),
        ("not-the-shared-secret", 600, True),
        (None, -60, True),
    ],
    ids=["valid", "wrong-credential", "expired-username"],
)
async def test_coturn_allocates_only_for_a_valid_unexpired_credential(
    coturn: Coturn, secret: str | None, expires_in_s: int, refused: bool
) -> None:
    (turn_server,) = ice_servers_for(
        coturn.settings(secret), "alice", int(time.time()) + expires_in_s
    )
    endpoint = create_turn_endpoint(
        _RelayedProtocol,
        server_addr=("127.0.0.1", coturn.port),
        username=turn_server.username,
        password=turn_server.credential,
    )
    async with asyncio.timeout(15):
        if refused:
            with pytest.raises(stun.TransactionFailed) as failed:
                await endpoint
            assert failed.value.response.error_code == 401
            return
        transport, protocol = await endpoint
    try:
        assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
    finally:
        transport.close()  # deletes the allocation in a task of its own
        async with asyncio.timeout(5):
            await protocol.lost


@needs_coturn
@pytest.mark.integration
@pytest.mark.parametrize("case", ["wrong-credential", "expired-username"])
async def test_a_refused_credential_leaves_a_relay_only_peer_without_candidates(
    coturn: Coturn, case: str
) -> None:
    if case == "wrong-credential":
        servers = ice_servers_for(
            coturn.settings("not-the-shared-secret"), "alice", int(time.time()) + 600
        )
    else:
        servers = ice_servers_for(coturn.settings(), "alice", int(time.time()) - 60)
    pc = RTCPeerConnection(configuration(servers, relay_only=True))
    pc.createDataChannel("chat")
    try:
        async with asyncio.timeout(20):
            await pc.setLocalDescription(await pc.createOffer())
        assert _local_candidates(pc) == []
    finally:
        await pc.close()
