"""``orstream latency``: the per-hop table, the plot and its errors, as a user runs it.

From a bench report written here, and live from /stats JSON served by a local HTTP server in
the shape the services answer (the services themselves are exercised by the bench test).
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from orstream.cli.main import main
from orstream.common.observability import HOPS

# p50 of each hop at 720p50 (ms), roughly as measured on the 2-core machine.
P50_MS = {
    "ingest.capture": 0.4,
    "ingest.publish": 0.3,
    "encoder.read": 1.2,
    "encoder.encode": 3.1,
    "encoder.publish": 0.4,
    "edge.receive": 0.8,
    "edge.send": 0.7,
    "viewer": 3.5,
}
KEY = "site1.or1.endoscope"


def summary(p50: float, n: int = 1500) -> dict[str, float]:
    return {
        "n": n,
        "p50": p50,
        "p95": round(p50 * 1.4, 3),
        "p99": round(p50 * 1.9, 3),
        "mean": round(p50 * 1.1, 3),
    }


def bench_report() -> dict[str, Any]:
    hops = {hop: summary(p50) for hop, p50 in P50_MS.items()}
    return {
        "name": "latency",
        "config": {
            "seconds": 30.0,
            "warmup_s": 3.0,
            "resolution": "1280x720",
            "fps": 50.0,
            "peers": 1,
        },
        "results": {
            "glass_to_glass_ms": summary(10.9),
            "frames_sent": 1500,
            "frames_received": 1500,
            "received_ratio": 1.0,
            "hops": hops,
            "hops_extra": {"encoder.queue": summary(0.8), "edge.send.peer10": summary(0.7)},
            "hop_sum_p50_ms": round(sum(P50_MS.values()), 3),
        },
    }


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def table_rows(out: str) -> dict[str, list[str]]:
    return {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.split() and line.split()[0] in HOPS
    }


@pytest.fixture
def bench_json(tmp_path: Path) -> Path:
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(bench_report(), indent=2))
    return path


def test_table_has_every_hop_in_path_order_and_shares_sum_to_100(
    bench_json: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["latency", "--from", str(bench_json)], capsys)
    assert code == 0, err
    assert "1280x720 @ 50 fps, 1 peer" in out
    rows = table_rows(out)
    assert list(rows) == list(HOPS)
    # hop n p50 p95 p99 mean share %
    assert float(rows["encoder.encode"][2]) == pytest.approx(3.1)
    assert float(rows["viewer"][4]) == pytest.approx(3.5 * 1.9, abs=0.01)
    shares = [float(r[6]) for r in rows.values()]
    assert sum(shares) == pytest.approx(100.0, abs=0.3)
    mean_sum = sum(p50 * 1.1 for p50 in P50_MS.values())
    assert float(rows["encoder.encode"][6]) == pytest.approx(100 * 3.1 * 1.1 / mean_sum, abs=0.06)
    total = next(line for line in out.splitlines() if line.startswith("sum of the hops")).split()
    assert float(total[4]) == pytest.approx(sum(P50_MS.values()), abs=0.01)  # its p50 column
    g2g = next(line for line in out.splitlines() if line.startswith("glass-to-glass")).split()
    assert float(g2g[2]) == pytest.approx(10.9)
    assert "encoder.queue" in out.split("beside the path")[1]


def test_png_and_json_are_written(
    bench_json: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "out" / "latency.png"
    out_json = tmp_path / "report.json"
    code, _, err = run(
        ["latency", "--from", str(bench_json), "--png", str(png), "--json", str(out_json)], capsys
    )
    assert code == 0, err
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 800 <= width <= 2000 and 400 <= height <= 1200, (width, height)
    assert len(data) > 20_000  # bars, labels and a legend, not a blank canvas
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[:2] == (height, width)
    assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[2])[::97]}) > 8  # colours
    report = json.loads(out_json.read_text())
    assert list(report["hops"]) == list(HOPS)
    assert sum(h["share"] for h in report["hops"].values()) == pytest.approx(1.0, abs=1e-3)
    assert report["hop_sum_ms"]["p50"] == pytest.approx(sum(P50_MS.values()))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "is not JSON"),
        (json.dumps({"name": "latency", "results": {}}), "no results.hops"),
        (json.dumps([1, 2]), "no results.hops"),
    ],
)
def test_missing_or_malformed_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    code, out, err = run(["latency", "--from", str(path)], capsys)
    assert code == 2
    assert message in err and err.startswith("orstream latency: ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_report_without_a_hop_or_its_samples_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = bench_report()
    del report["results"]["hops"]["encoder.read"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(report))
    code, _, err = run(["latency", "--from", str(path)], capsys)
    assert (code, "no hop 'encoder.read'" in err) == (2, True), err
    report = bench_report()
    report["results"]["hops"]["viewer"] = {"n": 0}
    path.write_text(json.dumps(report))
    code, _, err = run(["latency", "--from", str(path)], capsys)
    assert (code, "hop 'viewer' has no samples" in err) == (2, True), err


def test_console_entry_point_errors_without_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orstream.cli.main",
            "latency",
            "--from",
            str(tmp_path / "nope.json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"orstream latency: no such file: {tmp_path / 'nope.json'}"


# --- live, from /stats ----------------------------------------------------------------------


def stats_documents() -> dict[str, dict[str, Any]]:
    """What ingest, encoder and edge answer on /stats (the contract of issue 8)."""
    s = {hop: summary(p50, n=480) for hop, p50 in P50_MS.items()}
    return {
        "ingest": {"hops": {h: s[h] for h in ("ingest.capture", "ingest.publish")}},
        "encoder": {
            "streams": {
                KEY: {
                    "hops": {"encoder.read": s["encoder.read"], "encoder.queue": summary(0.8)},
                    "renditions": {
                        "src": {"hops": {h: s[h] for h in ("encoder.encode", "encoder.publish")}},
                        "360p": {"hops": {"encoder.encode": summary(1.0, n=3)}},
                    },
                }
            }
        },
        "edge": {
            "streams": {
                KEY: {
                    "renditions": {
                        "src": {
                            "hops": {
                                "edge.receive": s["edge.receive"],
                                "edge.send": s["edge.send"],
                                "edge.send.peer10": s["edge.send"],
                                "viewer": summary(3.5, n=9),
                            }
                        },
                        "360p": {"hops": {"edge.send": summary(0.5, n=3)}},
                    }
                }
            }
        },
    }


@pytest.fixture
def stats_server() -> Iterator[tuple[str, list[str]]]:
    """``http://host:port`` serving /<service>/stats, and the paths with queries it was asked."""
    documents = stats_documents()
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            asked.append(self.path)
            service, _, rest = url.path.strip("/").partition("/")
            if rest != "stats" or service not in documents or "since_ns" not in parse_qs(url.query):
                self.send_error(404)
                return
            body = json.dumps(documents[service]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_live_with_urls_samples_stats_since_its_start(
    stats_server: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    base, asked = stats_server
    code, out, err = run(
        [
            "latency",
            "--live",
            "--seconds",
            "0.2",
            "--ingest",
            f"{base}/ingest",
            "--encoder",
            f"{base}/encoder/stats",
            "--edge",
            f"{base}/edge",
        ],
        capsys,
    )
    assert code == 0, err
    assert f"live: {KEY} src" in out  # the busiest rendition, not 360p
    assert list(table_rows(out)) == list(HOPS)
    assert float(table_rows(out)["viewer"][1]) == 9  # n
    since = {re.search(r"since_ns=(\d+)", p).group(1) for p in asked}  # type: ignore[union-attr]
    assert len(since) == 1, asked  # the start, both times
    assert {p.split("?")[0] for p in asked} == {"/ingest/stats", "/encoder/stats", "/edge/stats"}
    assert len(asked) == 6  # each service at the start and after --seconds


def test_live_finds_the_stack_in_its_state_dir(
    stats_server: tuple[str, list[str]], state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, _ = stats_server
    state_dir.mkdir(parents=True)
    (state_dir / "stack.json").write_text(
        json.dumps(
            {
                "streams": [KEY],
                "stats_urls": {
                    "signaling": f"{base}/edge/stats",
                    "ingest": f"{base}/ingest/stats",
                    "ingest:endoscope": f"{base}/ingest/stats",
                    "encoder": f"{base}/encoder/stats",
                    "encoder-1": f"{base}/encoder/stats",
                },
            }
        )
    )
    code, out, err = run(["latency", "--live", "--seconds", "0.1", "--rendition", "src"], capsys)
    assert code == 0, err
    assert list(table_rows(out)) == list(HOPS)


def test_live_without_a_stack_exits_2(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["latency", "--live", "--seconds", "0.1"], capsys)
    assert code == 2
    assert "no stack running" in err and "stack.json" in err
    assert len(err.strip().splitlines()) == 1


def test_live_with_a_stack_that_does_not_answer_exits_2(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orstream.cli.stack import free_port

    gone = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(
        ["latency", "--live", "--ingest", gone, "--encoder", gone, "--edge", gone], capsys
    )
    assert code == 2
    assert "no answer from" in err and "Traceback" not in err
