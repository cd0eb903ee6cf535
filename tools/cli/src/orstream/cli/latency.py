"""``orstream latency``: where a frame's glass-to-glass time goes, hop by hop.

::

    orstream latency --from bench/results/latency-720p50-1peer.json [--png PATH] [--json PATH]
    orstream latency --live [--seconds S] [--stream KEY] [--rendition R]
                     [--ingest URL] [--encoder URL] [--edge URL] [--png PATH] [--json PATH]

The hops are those of :data:`orstream.common.observability.HOPS`: consecutive and not
overlapping, so their means add up to the mean glass-to-glass latency. The report comes from
an ``orstream bench latency`` JSON (``--from``) or from a running stack's ``/stats``
(``--live``: the services ``orstream up`` wrote into ``<state dir>/stack.json``, or the URLs
given), sampled over ``--seconds``. It prints a table (p50, p95, p99, mean and each hop's share
of the summed means) and can draw it (``--png``: one stacked bar per statistic, a segment per
hop in path order, the measured glass-to-glass marked) or write it as JSON.

:func:`path_hops` also turns the services' ``/stats`` into the bench report's ``hops``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orstream.cli.stack import STACK_FILE_NAME
from orstream.common.config import CommonSettings
from orstream.common.observability import (
    HOP_EDGE_SEND,
    HOP_EDGE_SEND_PEER10,
    HOP_ENCODER_ENCODE,
    HOP_ENCODER_PUBLISH,
    HOP_ENCODER_QUEUE,
    HOP_ENCODER_READ,
    HOP_INGEST_CAPTURE,
    HOP_INGEST_PUBLISH,
    HOP_VIEWER,
    HOPS,
)

#: One hop's latency in ms as the services report it: n, p50, p95, p99, mean.
Summary = Mapping[str, float]

#: Recorded beside the path (inside or alongside its hops), so never added to the sum.
EXTRA_HOPS = (HOP_ENCODER_QUEUE, HOP_EDGE_SEND_PEER10)
STATISTICS = ("p50", "p95", "p99", "mean")
DEFAULT_LIVE_SECONDS = 10.0
DEFAULT_RENDITION = "src"
HTTP_TIMEOUT_S = 5.0
#: The plot: size in inches at this many dots per inch.
PLOT_SIZE_IN = (11.0, 5.2)
PLOT_DPI = 110


class ReportError(Exception):
    """Why there is no report; one line for the user, exit status 2."""


@dataclass
class HopReport:
    """Per-hop latency of one stream and rendition, in path order."""

    title: str
    source: str
    hops: dict[str, Summary]
    extras: dict[str, Summary] = field(default_factory=dict)
    #: Measured end to end by probes (bench only); None live.
    glass_to_glass: Summary | None = None
    #: Why a hop may have no samples, said when it has none.
    hints: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Every hop of the path has samples and all statistics, or :class:`ReportError`."""
        for hop in HOPS:
            summary = self.hops.get(hop)
            if summary is None:
                raise ReportError(f"{self.source}: no hop {hop!r} (from before per-hop reporting?)")
            if not summary.get("n"):
                hint = f" ({self.hints[hop]})" if hop in self.hints else ""
                raise ReportError(f"{self.source}: hop {hop!r} has no samples{hint}")
            for stat in STATISTICS:
                if not isinstance(summary.get(stat), int | float):
                    raise ReportError(f"{self.source}: hop {hop!r} has no {stat}")

    def total(self, stat: str) -> float:
        """The hops' ``stat`` added up (exact for the mean; percentiles only roughly add)."""
        return sum(float(self.hops[hop][stat]) for hop in HOPS)

    def shares(self) -> dict[str, float]:
        """Each hop's mean as a fraction of the sum of the hop means."""
        total = self.total("mean")
        return {hop: float(self.hops[hop]["mean"]) / total if total else 0.0 for hop in HOPS}

    def as_json(self) -> dict[str, Any]:
        shares = self.shares()
        return {
            "title": self.title,
            "source": self.source,
            "hops": {hop: {**self.hops[hop], "share": round(shares[hop], 4)} for hop in HOPS},
            "hops_extra": dict(self.extras),
            "hop_sum_ms": {stat: round(self.total(stat), 3) for stat in STATISTICS},
            "glass_to_glass_ms": dict(self.glass_to_glass) if self.glass_to_glass else None,
        }


# --- from the services' /stats ----------------------------------------------------------------


def _hops_of(node: Any) -> dict[str, Any]:
    hops = node.get("hops") if isinstance(node, dict) else None
    return hops if isinstance(hops, dict) else {}


def path_hops(
    ingest: Mapping[str, Any],
    encoder: Mapping[str, Any],
    edge: Mapping[str, Any],
    stream_key: str,
    rendition: str = DEFAULT_RENDITION,
) -> tuple[dict[str, Summary], dict[str, Summary]]:
    """The path's hops and the extras of one stream and rendition from the three ``/stats``.

    A hop a service did not report is ``{"n": 0}``."""
    encoder_stream = encoder.get("streams", {}).get(stream_key, {})
    encoder_rendition = encoder_stream.get("renditions", {}).get(rendition, {})
    edge_rendition = (
        edge.get("streams", {}).get(stream_key, {}).get("renditions", {}).get(rendition, {})
    )
    found: dict[str, Any] = {
        **{
            h: s
            for h, s in _hops_of(ingest).items()
            if h in (HOP_INGEST_CAPTURE, HOP_INGEST_PUBLISH)
        },
        **{
            h: s
            for h, s in _hops_of(encoder_stream).items()
            if h in (HOP_ENCODER_READ, HOP_ENCODER_QUEUE)
        },
        **{
            h: s
            for h, s in _hops_of(encoder_rendition).items()
            if h in (HOP_ENCODER_ENCODE, HOP_ENCODER_PUBLISH)
        },
        **_hops_of(edge_rendition),
    }
    empty: Summary = {"n": 0}
    hops = {hop: found.get(hop, empty) for hop in HOPS}
    extras = {hop: found.get(hop, empty) for hop in EXTRA_HOPS}
    return hops, extras


# --- from a bench report ------------------------------------------------------------------


def load_bench(path: Path) -> HopReport:
    """The report in an ``orstream bench latency`` JSON file."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not JSON: {exc}") from None
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, dict) or not isinstance(results.get("hops"), dict):
        raise ReportError(f"{path} is not an 'orstream bench latency' report (no results.hops)")
    hops: dict[str, Summary] = {h: s for h, s in results["hops"].items() if isinstance(s, dict)}
    extras = results.get("hops_extra")
    g2g = results.get("glass_to_glass_ms")
    return HopReport(
        title=_bench_title(doc.get("config")),
        source=str(path),
        hops=hops,
        extras=extras if isinstance(extras, dict) else {},
        glass_to_glass=g2g if isinstance(g2g, dict) and g2g.get("n") else None,
    )


def _bench_title(config: Any) -> str:
    """``1280x720 @ 50 fps, 1 peer, 30 s`` from the bench's config."""
    if not isinstance(config, dict):
        return "orstream bench latency"
    parts = [str(config.get("resolution", "?"))]
    if isinstance(config.get("fps"), int | float):
        parts[0] += f" @ {config['fps']:g} fps"
    if isinstance(config.get("peers"), int):
        parts.append(f"{config['peers']} peer{'' if config['peers'] == 1 else 's'}")
    if isinstance(config.get("seconds"), int | float):
        parts.append(f"{config['seconds']:g} s")
    return ", ".join(parts)


# --- from a running stack -----------------------------------------------------------------


@dataclass
class Endpoints:
    """The ``/stats`` URLs of a stack: ingest per stream name (None: any), encoders, edge."""

    edge: str
    encoders: list[str]
    ingests: dict[str | None, str]
    streams: list[str] = field(default_factory=list)


def _stats_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/stats") else f"{url}/stats"


def find_endpoints(
    state_dir: Path, ingest: str | None, encoder: str | None, edge: str | None
) -> Endpoints:
    """The stack's ``/stats`` URLs from ``stack.json`` in ``state_dir``, overridden by those
    given (all three given: no stack file needed)."""
    described: dict[str, Any] = {}
    if not (ingest and encoder and edge):
        path = state_dir / STACK_FILE_NAME
        try:
            described = json.loads(path.read_text())
        except FileNotFoundError:
            raise ReportError(
                f"no stack running: {path} not found (start one with 'orstream up', "
                "or give --ingest, --encoder and --edge)"
            ) from None
        except (OSError, ValueError) as exc:
            raise ReportError(f"cannot read {path}: {exc}") from None
        if not isinstance(described, dict) or not isinstance(described.get("stats_urls"), dict):
            raise ReportError(f"{path} does not describe a stack (no stats_urls)")
    urls: dict[str, str] = described.get("stats_urls", {})
    replicas = sorted(k for k in urls if k.startswith("encoder-")) or [
        k for k in urls if k == "encoder"
    ]
    ingests: dict[str | None, str] = {
        label.partition(":")[2]: url for label, url in urls.items() if label.startswith("ingest:")
    }
    if "ingest" in urls:
        ingests.setdefault(None, urls["ingest"])
    if ingest:
        ingests = {None: _stats_url(ingest)}
    endpoints = Endpoints(
        edge=_stats_url(edge) if edge else urls.get("signaling", ""),
        encoders=[_stats_url(encoder)] if encoder else [urls[k] for k in replicas],
        ingests=ingests,
        streams=[s for s in described.get("streams", []) if isinstance(s, str)],
    )
    if not endpoints.edge or not endpoints.encoders or not endpoints.ingests:
        raise ReportError("the stack file names no edge, encoder or ingest: give their URLs")
    return endpoints


def fetch_stats(url: str, since_ns: int, frames: bool = False) -> dict[str, Any]:
    """One service's ``/stats`` over the frames captured since ``since_ns``."""
    query = f"?since_ns={since_ns}" + ("&frames=1" if frames else "")
    try:
        with urllib.request.urlopen(url + query, timeout=HTTP_TIMEOUT_S) as response:
            doc = json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ReportError(f"no answer from {url}: {reason} (is the stack running?)") from None
    except ValueError as exc:
        raise ReportError(f"{url} did not answer JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ReportError(f"{url} did not answer a JSON object")
    return doc


def live(
    endpoints: Endpoints, seconds: float, stream: str | None, rendition: str | None
) -> HopReport:
    """Sample the stack's ``/stats`` now and after ``seconds``; report the stream and rendition
    asked for, else the one the edge sent most frames of."""
    start_ns = time.time_ns()
    urls = [endpoints.edge, *endpoints.encoders, *endpoints.ingests.values()]
    for url in urls:  # fail now, not after the wait
        fetch_stats(url, start_ns)
    time.sleep(seconds)
    edge = fetch_stats(endpoints.edge, start_ns)
    encoder: dict[str, Any] = {"streams": {}}
    for url in endpoints.encoders:
        encoder["streams"].update(fetch_stats(url, start_ns).get("streams", {}))
    key, rend = _busiest(edge, stream, rendition)
    name = key.rsplit(".", 1)[-1]
    ingest_url = endpoints.ingests.get(name) or endpoints.ingests.get(None)
    if ingest_url is None:
        raise ReportError(f"no ingest known for stream {key}: give --ingest URL")
    ingest = fetch_stats(ingest_url, start_ns)
    hops, extras = path_hops(ingest, encoder, edge, key, rend)
    return HopReport(
        title=f"live: {key} {rend}, {seconds:g} s",
        source=f"live stack ({endpoints.edge})",
        hops=hops,
        extras=extras,
        hints={HOP_VIEWER: "no viewer sent a traced receipt: open the viewer, or sample longer"},
    )


def _busiest(edge: Mapping[str, Any], stream: str | None, rendition: str | None) -> tuple[str, str]:
    candidates: list[tuple[float, str, str]] = []
    for key, node in edge.get("streams", {}).items():
        if stream is not None and stream not in (key, key.rsplit(".", 1)[-1]):
            continue
        for rend, rnode in (node.get("renditions") or {}).items():
            if rendition is not None and rend != rendition:
                continue
            sent = _hops_of(rnode).get(HOP_EDGE_SEND, {})
            candidates.append(
                (float(sent.get("n", 0)) if isinstance(sent, dict) else 0.0, key, rend)
            )
    if not candidates:
        asked = " ".join(x for x in (stream, rendition) if x) or "any stream"
        raise ReportError(f"the edge sends nothing of {asked}: is a viewer watching?")
    _, key, rend = max(candidates)
    return key, rend


# --- output -------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def format_table(report: HopReport) -> str:
    """The per-hop table: p50, p95, p99, mean in ms, and each hop's share of the summed means."""
    shares = report.shares()
    head = f"{'hop':<22}{'n':>7}{'p50':>9}{'p95':>9}{'p99':>9}{'mean':>9}{'share':>9}"
    rule = "-" * len(head)
    lines = [f"per-hop latency (ms): {report.title}  [{report.source}]", head, rule]

    def row(name: str, s: Summary, share: str = "", n: str | None = None) -> str:
        cells = "".join(f"{_ms(s.get(stat)):>9}" for stat in STATISTICS)
        line = f"{name:<22}{n if n is not None else int(s.get('n', 0)):>7}{cells}{share:>9}"
        return line.rstrip()

    for hop in HOPS:
        lines.append(row(hop, report.hops[hop], f"{100 * shares[hop]:.1f} %"))
    lines.append(rule)
    sums = {stat: report.total(stat) for stat in STATISTICS}
    lines.append(row("sum of the hops", sums, "100.0 %", n=""))
    if report.glass_to_glass is not None:
        lines.append(row("glass-to-glass", report.glass_to_glass))
    lines.append("(the hops' means add up to the total; their percentiles only roughly do)")
    if report.extras:
        lines.append("beside the path (not in the sum):")
        lines.extend(row(f"  {hop}", s) for hop, s in report.extras.items())
    return "\n".join(lines)


def plot(report: HopReport, path: Path) -> None:
    """A PNG: one stacked horizontal bar per statistic, one segment per hop in path order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = list(STATISTICS[::-1])  # mean at the bottom … p50 on top
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI)
    try:
        widest = max(report.total(stat) for stat in stats)
        g2g = report.glass_to_glass
        if g2g is not None:
            widest = max(widest, *(float(g2g.get(s, 0.0)) for s in stats))
        for y, stat in enumerate(stats):
            left = 0.0
            for i, hop in enumerate(HOPS):
                width = float(report.hops[hop][stat])
                ax.barh(
                    y,
                    width,
                    left=left,
                    height=0.6,
                    color=colors(i % colors.N),
                    edgecolor="white",
                    linewidth=0.8,
                    label=hop if y == 0 else None,
                )
                if width >= 0.045 * widest:
                    ax.text(
                        left + width / 2,
                        y,
                        f"{width:.1f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white",
                    )
                left += width
            label = f"sum {left:.1f}"
            end = left
            if g2g is not None and isinstance(g2g.get(stat), int | float):
                value = float(g2g[stat])
                ax.plot(
                    [value, value],
                    [y - 0.4, y + 0.4],
                    color="black",
                    linewidth=2.2,
                    label="measured glass-to-glass" if y == 0 else None,
                )
                label += f"  |  glass-to-glass {value:.1f}"
                end = max(end, value)
            ax.text(end + 0.012 * widest, y, label, va="center", fontsize=8)
        ax.set_yticks(range(len(stats)), stats)
        ax.set_xlim(0, widest * 1.4)
        ax.set_xlabel("ms (each hop's statistic, stacked in path order)")
        ax.set_title(f"Where a frame's latency goes: {report.title}", fontsize=12)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: labels[i] not in HOPS)  # hops first
        ax.legend(
            [handles[i] for i in order],
            [labels[i] for i in order],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
            ncol=5,
            fontsize=8,
            frameon=False,
        )
        fig.text(
            0.99,
            0.01,
            "means add up exactly; percentiles of the hops only roughly",
            ha="right",
            fontsize=7,
            color="grey",
        )
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


# --- the command --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--from", dest="from_path", type=Path, metavar="PATH", help="an orstream bench latency JSON"
    )
    which.add_argument("--live", action="store_true", help="sample a running stack's /stats")
    parser.add_argument(
        "--seconds", type=float, default=DEFAULT_LIVE_SECONDS, help="live: how long to sample"
    )
    parser.add_argument(
        "--stream", default=None, help="live: stream (key or name; default: busiest)"
    )
    parser.add_argument("--rendition", default=None, help="live: rendition (default: busiest)")
    parser.add_argument("--ingest", default=None, metavar="URL", help="live: ingest's health URL")
    parser.add_argument("--encoder", default=None, metavar="URL", help="live: encoder's health URL")
    parser.add_argument("--edge", default=None, metavar="URL", help="live: the edge's URL")
    parser.add_argument("--png", type=Path, default=None, metavar="PATH", help="write the plot")
    parser.add_argument("--json", dest="json_out", type=Path, default=None, metavar="PATH")


def build(args: argparse.Namespace) -> HopReport:
    if args.from_path is not None:
        return load_bench(args.from_path)
    if args.seconds <= 0:
        raise ReportError("--seconds must be positive")
    endpoints = find_endpoints(CommonSettings().state_dir, args.ingest, args.encoder, args.edge)
    return live(endpoints, args.seconds, args.stream, args.rendition)


def main(args: argparse.Namespace) -> int:
    try:
        report = build(args)
        report.check()
        print(format_table(report), flush=True)
        if args.json_out is not None:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(report.as_json(), indent=2) + "\n")
        if args.png is not None:
            plot(report, args.png)
            print(f"orstream latency: wrote {args.png}", file=sys.stderr)
    except ReportError as exc:
        print(f"orstream latency: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"orstream latency: cannot write: {exc}", file=sys.stderr)
        return 2
    return 0
