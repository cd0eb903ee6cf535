"""RFC 5424 audit messages to real collectors on loopback: UDP, TCP (octet counting) and TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree

from orstream.common import audit
from orstream.common.syslog import BOM, SyslogForwarder, format_message

#: RFC 5424 HEADER SP STRUCTURED-DATA SP MSG, with the fields this project sends.
SYSLOG = re.compile(
    rb"<(?P<pri>\d{1,3})>(?P<version>1) "
    rb"(?P<timestamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) "
    rb"(?P<hostname>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) "
    rb"(?P<msgid>[!-~]{1,32}) (?P<sd>-) (?P<msg>.*)\Z",
    re.DOTALL,
)


def parse(message: bytes) -> dict[str, bytes]:
    match = SYSLOG.match(message)
    assert match, message[:200]
    return match.groupdict()


def login(ok: bool, user: str = "alice@hospital.example") -> audit.AuditRecord:
    return audit.user_authentication(
        site="site1",
        source_id="signaling-1",
        user=user,
        outcome_ok=ok,
        reason="ok" if ok else "expired token",
        client_address="10.0.0.8",
    )


def assert_audit_body(msg: bytes) -> None:
    assert msg.startswith(BOM + b"<?xml")
    with audit.schema_file("rng").open("rb") as f:
        schema = etree.RelaxNG(etree.parse(f))
    assert schema.validate(etree.fromstring(msg[len(BOM) :])), schema.error_log


async def wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_format_is_rfc5424_with_the_xml_after_a_bom() -> None:
    xml = login(True).to_xml()
    when = dt.datetime(2026, 3, 1, 10, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    message = format_message(
        xml,
        failure=False,
        hostname="edge-7",
        app_name="orstream-signaling",
        procid="12",
        timestamp=when,
    )
    fields = parse(message)
    assert fields["pri"] == b"85", "authpriv (10) * 8 + notice (5)"
    assert fields["timestamp"] == b"2026-03-01T08:00:00.000005Z"
    assert (fields["hostname"], fields["app"], fields["procid"]) == (
        b"edge-7",
        b"orstream-signaling",
        b"12",
    )
    assert fields["msgid"] == b"IHE+RFC-3881"
    assert fields["msg"] == BOM + xml
    assert_audit_body(fields["msg"])
    failed = parse(format_message(xml, failure=True, hostname="h", app_name="a", procid="1"))
    assert failed["pri"] == b"84", "authpriv (10) * 8 + warning (4)"


def test_header_fields_are_made_printable_and_bounded() -> None:
    fields = parse(
        format_message(
            b"<x/>", failure=False, hostname="", app_name="my app\u00e9" * 10, procid="1"
        )
    )
    assert fields["hostname"] == b"-"
    assert fields["app"] == (b"my_app_" * 10)[:48]


@dataclass
class Collector:
    """A TCP (or TLS) syslog collector: reads octet-counted frames, checking each count."""

    frames: list[bytes] = field(default_factory=list)
    connections: int = 0
    hang_up_after: int | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        taken = 0
        try:
            while self.hang_up_after is None or taken < self.hang_up_after:
                length = await reader.readuntil(b" ")
                assert re.fullmatch(rb"[1-9]\d* ", length), length
                self.frames.append(await reader.readexactly(int(length)))
                taken += 1
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    state = Collector()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    yield state, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_udp_one_message_per_datagram() -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    class Server(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received.put_nowait(data)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        Server, local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    port = transport.get_extra_info("sockname")[1]
    forwarder = SyslogForwarder(
        f"udp://127.0.0.1:{port}", app_name="orstream-signaling", hostname="edge-1"
    )
    try:
        await forwarder.start()
        assert forwarder.send(login(True).to_xml(), failure=False)
        assert forwarder.send(login(False).to_xml(), failure=True)
        got = [parse(await asyncio.wait_for(received.get(), 5.0)) for _ in range(2)]
    finally:
        await forwarder.stop()
        transport.close()
    assert [g["pri"] for g in got] == [b"85", b"84"]
    assert {g["app"] for g in got} == {b"orstream-signaling"} and got[0]["hostname"] == b"edge-1"
    for g in got:
        assert_audit_body(g["msg"])
    assert forwarder.stats()["sent"] == 2


async def test_tcp_frames_are_octet_counted(collector: tuple[Collector, int]) -> None:
    state, port = collector
    forwarder = SyslogForwarder(f"tcp://127.0.0.1:{port}")
    await forwarder.start()
    users = [f"user{i}" + "x" * (i * 37) for i in range(20)]
    for i, user in enumerate(users):
        assert forwarder.send(login(i % 3 != 0, user).to_xml(), failure=i % 3 == 0)
    await wait_for(lambda: len(state.frames) == len(users))
    await forwarder.stop()
    assert state.connections == 1
    for i, (frame, user) in enumerate(zip(state.frames, users, strict=True)):
        fields = parse(frame)
        assert fields["pri"] == (b"84" if i % 3 == 0 else b"85")
        assert_audit_body(fields["msg"])
        assert f'UserID="{user}"'.encode() in fields["msg"]


async def test_tcp_reconnects_after_the_collector_hangs_up(
    collector: tuple[Collector, int],
) -> None:
    state, port = collector
    state.hang_up_after = 1
    forwarder = SyslogForwarder(f"tcp://127.0.0.1:{port}")
    await forwarder.start()
    try:
        forwarder.send(login(True, "first").to_xml())
        await wait_for(lambda: len(state.frames) == 1)
        await asyncio.sleep(0.2)  # the hang-up reaches the forwarder
        forwarder.send(login(True, "second").to_xml())
        await wait_for(lambda: len(state.frames) == 2)
    finally:
        await forwarder.stop()
    assert state.connections == 2
    assert b'UserID="second"' in state.frames[1]


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the test's own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audit collector")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "collector.pem", tmp_path / "collector.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_carries_the_same_frames(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    state = Collector()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context(cafile=str(cert))
    forwarder = SyslogForwarder(f"tls://127.0.0.1:{port}", ssl_context=client_context)
    try:
        await forwarder.start()
        forwarder.send(login(False).to_xml(), failure=True)
        await wait_for(lambda: len(state.frames) == 1)
    finally:
        await forwarder.stop()
        server.close()
        await server.wait_closed()
    fields = parse(state.frames[0])
    assert fields["pri"] == b"84"
    assert_audit_body(fields["msg"])


async def test_untrusted_tls_collector_gets_nothing(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    state = Collector()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    forwarder = SyslogForwarder(f"tls://127.0.0.1:{port}")  # system CAs: the test CA is not one
    try:
        await forwarder.start()
        forwarder.send(login(True).to_xml())
        await wait_for(lambda: forwarder.stats()["errors"] == 1, timeout_s=10.0)
    finally:
        await forwarder.stop()
        server.close()
        await server.wait_closed()
    assert state.frames == []


async def test_a_dead_collector_never_raises_and_stop_is_bounded() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    forwarder = SyslogForwarder(f"tcp://127.0.0.1:{port}", queue_size=4)
    await forwarder.start()
    sent = [forwarder.send(login(True).to_xml()) for _ in range(10)]
    assert sent.count(False) >= 5, "beyond the queue, messages are dropped"
    started = time.monotonic()
    await forwarder.stop(timeout_s=1.0)
    assert time.monotonic() - started < 5.0
    stats = forwarder.stats()
    assert stats["sent"] == 0 and stats["dropped"] + stats["errors"] == 10, stats
    assert not forwarder.send(b"<x/>"), "stopped: dropped, not raised"


def test_a_bad_target_is_refused_at_construction() -> None:
    for url in ("", "syslog.example:514", "http://collector:514", "udp://:514"):
        with pytest.raises(ValueError, match="expected udp://"):
            SyslogForwarder(url)
    forwarder = SyslogForwarder("tls://collector.example")
    assert (forwarder.transport, forwarder.host, forwarder.port) == (
        "tls",
        "collector.example",
        6514,
    )
