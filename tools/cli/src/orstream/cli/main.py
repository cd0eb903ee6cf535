"""``orstream``: run the stack, mint development tokens, run benchmarks.

::

    orstream up [--source [NAME=]URL ...] [--streams N] [--encoders K] [--room R] [--stream S]
                [--viewer-port P] [--edge-port P]
    orstream token --role R --rooms GLOB [--ttl S] [--sub NAME]
    orstream bench latency [--seconds S] [--resolution WxH] [--fps F] [--peers N] --json PATH
    orstream bench ingest [--source URL] [--seconds S] --json PATH
    orstream bench encoder [--seconds S] --json PATH
    orstream bench fanout [--peers N] [--baseline-peers K] [--seconds S] --json PATH
    orstream bench browser --seconds S [--resolution WxH] [--fps F] --json PATH
    orstream latency (--from PATH | --live [--seconds S]) [--png PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from orstream.cli.stack import (
    DEFAULT_EDGE_PORT,
    DEFAULT_VIEWER_PORT,
    STACK_FILE_NAME,
    Stack,
    StackConfig,
    StackError,
    StreamSpec,
    port_or_free,
)
from orstream.common.config import CommonSettings
from orstream.common.policy import Policy, PolicyError
from orstream.common.subjects import TOKEN_PATTERN
from orstream.common.tokens import DEFAULT_TOKEN_TTL_S, load_or_create_signing_key, mint_token

DEMO_ROLES = ("surgeon", "expert", "student", "ops")


def make_token(
    role: str, rooms: list[str], ttl_s: int = DEFAULT_TOKEN_TTL_S, subject: str | None = None
) -> str:
    settings = CommonSettings()
    key = load_or_create_signing_key(settings.dev_key_path)
    return mint_token(
        key,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        role=role,
        rooms=rooms,
        subject=subject,
        ttl_s=ttl_s,
    )


def policy_role(role: str) -> str:
    """``--role``: any role of the policy file (``ORSTREAM_POLICY_FILE``, else the defaults)."""
    try:
        roles = Policy.load(CommonSettings().policy_file).roles
    except PolicyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if role not in roles:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {role!r} (the policy's roles: {', '.join(sorted(roles))})"
        )
    return role


def cmd_token(args: argparse.Namespace) -> int:
    print(make_token(args.role, args.rooms, args.ttl, args.sub))
    return 0


def stream_specs(sources: Sequence[str], first_stream: str, count: int = 0) -> list[StreamSpec]:
    """``[name=]url`` arguments → one stream each; unnamed ones are ``first_stream``, then
    ``stream2``, ``stream3``… (names must be unique and valid subject tokens). Test patterns
    make up the rest when ``count`` asks for more streams than sources were given."""
    specs: list[StreamSpec] = []
    # The demo's first test pattern carries the fictitious patient's context (see TestPattern).
    sources = list(sources or ["testpattern:?context=demo"])
    sources += ["testpattern:"] * (count - len(sources))
    for i, arg in enumerate(sources):
        name, sep, url = arg.partition("=")
        if not sep or ":" in name or not re.fullmatch(TOKEN_PATTERN, name):
            name, url = (first_stream if i == 0 else f"stream{i + 1}"), arg
        specs.append(StreamSpec(name, url))
    names = [s.stream for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"stream names must be unique: {', '.join(names)}")
    return specs


def cmd_up(args: argparse.Namespace) -> int:
    settings = CommonSettings()
    try:
        specs = stream_specs(args.source, args.stream, args.streams)
    except ValueError as exc:
        print(f"orstream: {exc}", file=sys.stderr)
        return 2
    config = StackConfig(
        site=settings.site,
        room=args.room,
        streams=specs,
        nats_url=args.nats_url
        or (settings.nats_url if "ORSTREAM_NATS_URL" in os.environ else None),
        viewer_port=port_or_free(args.viewer_port, args.host),
        edge_port=port_or_free(args.edge_port, args.host),
        host=args.host,
        encoders=args.encoders,
        stack_file=settings.state_dir / STACK_FILE_NAME,  # for orstream latency --live
    )
    # A plain list, not a threading.Event: the handler runs on the main thread between two
    # bytecodes, possibly inside Event.wait() holding the Event's lock, and set() would then
    # wait for that lock forever (Ctrl-C hung the stack).
    stopping: list[str] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: stopping.append(signal.Signals(signum).name))
    stack = Stack(config)
    print(
        f"orstream: starting the stack for {config.site}/{config.room}: "
        + ", ".join(f"{s.stream} ← {s.source}" for s in specs)
        + f"; {config.encoders} encoder replica{'s' if config.encoders > 1 else ''} …",
        flush=True,
    )
    try:
        stack.start()
    except StackError as exc:
        print(f"orstream: could not start: {exc}", file=sys.stderr)
        return 1
    try:
        rooms = [f"{config.site}/*"]
        tokens = {role: make_token(role, rooms) for role in DEMO_ROLES}
        print(
            "\n"
            f"  NATS      {stack.nats_url}{' (embedded)' if stack.nats else ''}\n"
            f"  Edge      {stack.edge_url}  (WHEP: {stack.whep_url()})\n"
            f"  Viewer    {stack.viewer_url}/\n"
            + "".join(
                f"  Encoder   encoder-{i}: {stack.stats_url(f'encoder-{i}')} (its streams)\n"
                for i in range(1, config.encoders + 1)
            )
            + "\n"
            f"  Open this in a browser (token for the surgeon role):\n"
            f"    {stack.viewer_url}/#token={tokens['surgeon']}\n"
            + (
                "  Other streams of the room: add ?stream=NAME before the #: "
                + ", ".join(s.stream for s in specs[1:])
                + "\n"
                if len(specs) > 1
                else ""
            )
            + "\n"
            "  Tokens for the demo roles (paste into the viewer;"
            " more with: orstream token --role R --rooms GLOB):\n"
            + "".join(f"    {role:8s} {token}\n" for role, token in tokens.items())
            + "\n  Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stopping:
            for process in stack.processes:
                if not process.alive():
                    print(
                        f"orstream: {process.name} exited ({process.popen.returncode}); stopping",
                        file=sys.stderr,
                    )
                    stopping.append(process.name)
            time.sleep(0.5)  # a signal interrupts the sleep
    finally:
        print("orstream: stopping …", flush=True)
        stack.stop()
        print("orstream: stopped", flush=True)
    return 0


def cmd_deid(args: argparse.Namespace) -> int:
    from orstream.cli.deid import run_deid

    return run_deid(args.inputs, args.output, role=args.role, profile=args.profile)


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from orstream.bench import latency
    except ImportError:
        print(
            "orstream bench needs the orstream-bench package (part of the workspace)",
            file=sys.stderr,
        )
        return 2
    if args.scenario == "latency":
        return latency.main(args)
    if args.scenario == "ingest":
        from orstream.bench import ingest

        return ingest.main(args)
    if args.scenario == "encoder":
        from orstream.bench import encoder

        return encoder.main(args)
    if args.scenario == "metadata":
        from orstream.bench import metadata

        return metadata.main(args)
    if args.scenario == "fanout":
        from orstream.bench import fanout

        return fanout.main(args)
    if args.scenario == "browser":
        from orstream.bench import browser

        return browser.main(args)
    return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orstream", description="Live OR video and DICOM context over NATS and WebRTC."
    )
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the whole stack on this machine")
    up.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="a stream's source, repeatable: testpattern:, sdp:PATH, file:PATH[?loop=1], "
        "dicom:PATH[?loop=1], v4l2:/dev/videoN, lavfi:GRAPH (default: the synthetic endoscope)",
    )
    up.add_argument(
        "--streams",
        type=int,
        default=0,
        metavar="N",
        help="streams in the room: the sources given, then test patterns up to N",
    )
    up.add_argument(
        "--encoders",
        type=int,
        default=1,
        metavar="K",
        help="encoder replicas; they share the streams and take over each other's",
    )
    up.add_argument("--room", default="or1")
    up.add_argument("--stream", default="endoscope")
    up.add_argument("--host", default="127.0.0.1", help="address the edge and viewer listen on")
    up.add_argument("--viewer-port", type=int, default=DEFAULT_VIEWER_PORT)
    up.add_argument("--edge-port", type=int, default=DEFAULT_EDGE_PORT)
    up.add_argument("--nats-url", default=None, help="use this NATS instead of an embedded one")
    up.set_defaults(func=cmd_up)

    token = sub.add_parser("token", help="mint a development token")
    token.add_argument("--role", required=True, type=policy_role, help="a role of the policy")
    token.add_argument(
        "--rooms", required=True, action="append", help="site/room glob, e.g. 'site1/*'"
    )
    token.add_argument("--ttl", type=int, default=DEFAULT_TOKEN_TTL_S, help="seconds")
    token.add_argument("--sub", default=None, help="subject (user name)")
    token.set_defaults(func=cmd_token)

    bench = sub.add_parser("bench", help="run a benchmark and write JSON")
    scenarios = bench.add_subparsers(dest="scenario", required=True)
    lat = scenarios.add_parser("latency", help="glass-to-glass latency into headless probes")
    lat.add_argument("--seconds", type=float, default=20.0)
    lat.add_argument("--warmup", type=float, default=3.0)
    lat.add_argument("--resolution", default="1280x720")
    lat.add_argument("--fps", type=float, default=50.0)
    lat.add_argument("--peers", type=int, default=1)
    lat.add_argument("--json", required=True, dest="json_path")
    ing = scenarios.add_parser("ingest", help="frames, losses and CPU of ingest for a source")
    ing.add_argument(
        "--source",
        default="sdp:bench/sdp/rfc4175-1280x720p50-10bit.sdp",
        help="source URL; an sdp: source gets a GStreamer sender for the flow it describes",
    )
    ing.add_argument("--seconds", type=float, default=20.0)
    ing.add_argument("--json", required=True, dest="json_path")
    enc = scenarios.add_parser("encoder", help="encoded fps per core and encode latency")
    enc.add_argument("--seconds", type=float, default=5.0, help="of video per codec and size")
    enc.add_argument("--json", required=True, dest="json_path")
    meta = scenarios.add_parser(
        "metadata", help="de-identification throughput; meta.in → DataChannel latency"
    )
    meta.add_argument("--seconds", type=float, default=10.0, help="of context at 25 Hz")
    meta.add_argument("--datasets", type=int, default=2000, help="for the throughput run")
    meta.add_argument("--json", required=True, dest="json_path")
    fan = scenarios.add_parser(
        "fanout", help="peers per edge core (encode-once fan-out) against aiortc encoding per peer"
    )
    fan.add_argument("--peers", type=int, default=30, help="WebRTC peers on the edge's stream")
    fan.add_argument(
        "--baseline-peers", type=int, default=2, help="peers of the baseline, one encoder each"
    )
    fan.add_argument("--seconds", type=float, default=20.0, help="measured window per sender")
    fan.add_argument("--warmup", type=float, default=3.0)
    fan.add_argument("--peers-per-process", type=int, default=50, help="receiving peers")
    fan.add_argument(
        "--compare-packetization",
        action="store_true",
        help="also measure the fan-out with every peer packetizing each AU itself",
    )
    fan.add_argument("--profile", default=None, metavar="PATH", help="cProfile the edge to PATH")
    fan.add_argument("--json", required=True, dest="json_path")
    bro = scenarios.add_parser(
        "browser",
        help="glass-to-glass latency in Debian's Chromium (Playwright), from the timecode",
    )
    bro.add_argument("--seconds", type=float, required=True, help="measured window")
    bro.add_argument("--warmup", type=float, default=3.0)
    bro.add_argument("--resolution", default="1280x720")
    bro.add_argument("--fps", type=float, default=50.0)
    bro.add_argument("--json", required=True, dest="json_path")
    bench.set_defaults(func=cmd_bench)

    from orstream.cli import latency  # the per-hop report; matplotlib only when plotting

    report = sub.add_parser("latency", help="per-hop latency table and plot (bench JSON or live)")
    latency.add_arguments(report)
    report.set_defaults(func=latency.main)

    deid = sub.add_parser(
        "deid", help="de-identify DICOM Part 10 files offline (PS3.15 Annex E, as a role sees)"
    )
    deid.add_argument("inputs", nargs="+", metavar="IN", help="files or directories")
    which = deid.add_mutually_exclusive_group(required=True)
    which.add_argument("--role", help="the profile the policy file gives this role")
    which.add_argument("--profile", help="basic[+option...], e.g. basic+clean-descriptors")
    deid.add_argument("-o", "--output", required=True, type=Path, help="directory to write to")
    deid.set_defaults(func=cmd_deid)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
