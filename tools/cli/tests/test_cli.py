"""The ``orstream`` command as a user runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import jwt
import pytest

from orstream.common.shm import SHM_DIR


def _orstream(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orstream.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_token_is_a_signed_jwt_for_the_role(state_dir: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "orstream.cli.main",
            "token",
            "--role",
            "student",
            "--rooms",
            "site1/or*",
            "--ttl",
            "60",
            "--sub",
            "lecture-hall-2",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    ).stdout.strip()
    claims = jwt.decode(out, options={"verify_signature": False})
    assert (claims["role"], claims["rooms"], claims["sub"]) == (
        "student",
        ["site1/or*"],
        "lecture-hall-2",
    )
    assert 55 <= claims["exp"] - claims["iat"] <= 60
    assert (state_dir / "dev-signing-key.pem").stat().st_mode & 0o777 == 0o600


def test_token_refuses_an_unknown_role() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orstream.cli.main", "token", "--role", "admin", "--rooms", "*"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "invalid choice: 'admin'" in result.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_up_prints_url_and_token_and_ctrl_c_leaves_nothing_behind(state_dir: Path) -> None:
    stream = f"cli{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if k != "ORSTREAM_NATS_URL"}
    proc = _orstream("up", "--stream", stream, "--viewer-port", "0", "--edge-port", "0", env=env)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(lines)
        match = re.search(r"(http://127\.0\.0\.1:\d+)/#token=(\S+)", output)
        assert match, output[-2000:]
        viewer, token = match.groups()
        with urllib.request.urlopen(f"{viewer}/config.json", timeout=5) as r:
            config = json.loads(r.read())
        assert config["stream"] == stream
        request = urllib.request.Request(
            f"{config['edgeUrl']}/api/v1/streams", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            listing = json.loads(r.read())
        assert [s["stream"] for s in listing["streams"]] == [stream]
        assert "(embedded)" in output
        children = _descendants(proc.pid)
        assert len(children) >= 6, f"expected nats-server and 5 services, found {children}"
        ring = SHM_DIR / f"orstream-site1-or1-{stream}"
        assert ring.exists()
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest[-2000:]
    assert "orstream: stopped" in rest
    assert "Traceback" not in rest, rest[-3000:]
    leftovers = [pid for pid in children if _alive(pid)]
    assert not leftovers, f"orphans after Ctrl-C: {leftovers}"
    assert not ring.exists(), "shared-memory ring left behind"


def _descendants(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            out.append(child)
            out.extend(_descendants(child))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_deid_writes_de_identified_files_named_by_their_new_uid(
    tmp_path: Path, state_dir: Path
) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    source = get_testdata_file("CT_small.dcm")
    assert source is not None
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orstream.cli.main",
            "deid",
            source,
            "--role",
            "student",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (written,) = out.iterdir()
    result = pydicom.dcmread(written)
    assert written.name == f"{result.SOPInstanceUID}.dcm"
    assert result.SOPInstanceUID.startswith("2.25.")
    assert result.PatientIdentityRemoved == "YES" and not str(result.PatientName)
    assert "1 de-identified with basic+clean-descriptors" in done.stderr
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "orstream.cli.main",
            "deid",
            source,
            "--role",
            "surgeon",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "identified view" in refused.stderr
