"""The observability deployment in ``deploy/observability`` holds together:

- the Grafana dashboard is valid by Grafana's own JSON schemas (vendored in ``schema/``: the
  dashboard, each panel type's options and field config, each datasource's query), and those
  schemas do reject a broken dashboard;
- the collector, Prometheus, Tempo and Grafana provisioning files parse and point at each other
  (ports, datasource uids, the dashboards' mount), and Prometheus scrapes the documented ports;
- every metric the dashboard queries is really served on the ``/metrics`` of a running stack,
  with the labels the dashboard filters and groups by.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import nats
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import orstream.common
from orstream.cli.main import make_token
from orstream.cli.stack import Stack, StackConfig
from orstream.common import observability
from orstream.common.messages import FrameReady
from orstream.signaling.settings import DEFAULT_HTTP_PORT as EDGE_HTTP_PORT
from orstream.viewer.probe import Probe
from orstream.viewer.settings import DEFAULT_HTTP_PORT as VIEWER_HTTP_PORT

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
SCHEMAS = OBSERVABILITY / "schema"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "orstream.json"
PROVISIONING = OBSERVABILITY / "grafana" / "provisioning"
README = OBSERVABILITY / "README.md"

#: Where each service serves ``/metrics`` in the compose stack (README.md says so too): the
#: health port for those that have one, the HTTP port for the edge and the viewer.
HEALTH_PORT = 9464
METRICS_PORTS = {
    "ingest": HEALTH_PORT,
    "encoder": HEALTH_PORT,
    "metadata": HEALTH_PORT,
    "signaling": EDGE_HTTP_PORT,
    "viewer": VIEWER_HTTP_PORT,
}
#: Exposition formats Prometheus 3 parses (it refuses to guess for other content types).
KNOWN_CONTENT_TYPES = (
    "text/plain; version=0.0.4",
    "text/plain; version=1.0.0",
    "application/openmetrics-text",
)
ROWS = ["Latency", "Streams", "Edge", "Security"]
#: PromQL words that look like metric names but are not.
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_OPERATORS = {"and", "or", "unless", "offset", "atan2"}

# --- the dashboard -----------------------------------------------------------------------------


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def schema_validator(name: str, definition: str | None = None) -> jsonschema.Draft7Validator:
    """A validator for ``schema/<name>.jsonschema.json`` (or one of its ``definitions``)."""
    schema = load_json(SCHEMAS / f"{name}.jsonschema.json")
    if definition is not None:
        assert definition in schema["definitions"], f"{name} schema has no {definition}"
        schema = {**schema, "$ref": f"#/definitions/{definition}"}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_errors(dashboard: dict[str, Any]) -> list[str]:
    """Everything Grafana's schemas find wrong with ``dashboard``: the dashboard kind, and for
    every panel its plugin's ``Options`` and ``FieldConfig`` and each query by its datasource."""

    def where(prefix: str, error: jsonschema.ValidationError) -> list[str]:
        """The error and, under a ``oneOf`` (panel or row), why each alternative failed."""
        path = "/".join(str(p) for p in error.absolute_path)
        found = [f"{prefix}/{path}: {error.message}"]
        for cause in error.context or []:
            found += where(prefix, cause)
        return found

    def check(prefix: str, validator: jsonschema.Draft7Validator, instance: Any) -> list[str]:
        return [line for e in validator.iter_errors(instance) for line in where(prefix, e)]

    errors = check("dashboard", schema_validator("dashboard"), dashboard)
    for panel in all_panels(dashboard):
        kind = panel.get("type")
        if kind == "row" or not isinstance(kind, str):
            continue
        label = f"panel {panel.get('id')} ({kind})"
        if not (SCHEMAS / f"{kind}.jsonschema.json").exists():
            errors.append(f"{label}: no schema vendored for panel type {kind!r}")
            continue
        if "options" in panel:
            errors += check(f"{label} options", schema_validator(kind, "Options"), panel["options"])
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
        if custom is not None:
            errors += check(f"{label} custom", schema_validator(kind, "FieldConfig"), custom)
        for target in panel.get("targets", []):
            source = (target.get("datasource") or panel.get("datasource") or {}).get("type")
            if not (SCHEMAS / f"{source}.jsonschema.json").exists():
                errors.append(f"{label}: no schema vendored for datasource type {source!r}")
                continue
            errors += check(f"{label} target", schema_validator(str(source), "Dataquery"), target)
    return errors


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel queries and the template variables' queries."""
    found = [
        target["expr"]
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"], re.S)
            assert match, f"variable {variable['name']}: not a label_values() query"
            found.append(match.group(1))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers left once strings, label matchers,
    ranges, ``by (…)``-like clauses, function calls and keywords are set aside."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*\(", "(", text)
    names = set(re.findall(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", text))
    return names - PROMQL_KEYWORDS - PROMQL_OPERATORS


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """``metric{label op "value", …}`` selectors: the metric and its matchers by label."""
    found = []
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        matchers = {
            label: (op, value)
            for label, op, value in re.findall(
                r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', match.group(2)
            )
        }
        found.append((match.group(1), matchers))
    return found


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels.update(label.strip() for label in clause.split(",") if label.strip())
    return labels


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = load_json(DASHBOARD)
    return result


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict[str, Any]]:
    """The provisioned datasources by uid."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((PROVISIONING / "datasources").glob("*.yaml")):
        for source in load_yaml(path)["datasources"]:
            assert source["uid"] not in found, f"datasource uid {source['uid']} twice"
            found[source["uid"]] = source
    return found


def test_the_dashboard_is_valid_by_grafanas_schemas(dashboard: dict[str, Any]) -> None:
    assert dashboard_errors(dashboard) == []
    kinds = {p["type"] for p in all_panels(dashboard)}
    assert {"row", "timeseries", "heatmap", "stat", "table"} <= kinds


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets ``path`` (keys and list indexes, '/'-separated; panel N is the Nth
    panel that is not a row) to ``value``."""

    def mutate(dashboard: dict[str, Any]) -> None:
        node: Any = dashboard
        keys = path.split("/")
        if keys[0] == "panel":
            node = [p for p in all_panels(dashboard) if p["type"] != "row"][int(keys[1])]
            keys = keys[2:]
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (_set("panel/0/gridPos/w", "8"), "is not of type 'integer'"),
        (_set("panel/0/gridPos/w", 25), "greater than the maximum"),
        (_set("panel/0/title", 7), "is not of type 'string'"),
        (_set("panel/0/type", ""), "should be non-empty"),
        (_set("panel/0/options/legend/displayMode", "sideways"), "is not one of"),
        (_set("panel/0/fieldConfig/defaults/custom/lineWidth", "thick"), "is not of type"),
        (_set("panel/0/targets/0/expr", _DELETE), "'expr' is a required property"),
        (_set("panel/0/targets/0/format", "bitmap"), "is not one of"),
        (_set("panel/0/fieldConfig/defaults/thresholds", {"mode": "absolute"}), "'steps'"),
        (_set("templating/list/0/type", "guess"), "is not one of"),
        (_set("schemaVersion", "42"), "is not of type 'integer'"),
        (_set("annotations", _DELETE), "'annotations' is a required property"),
        (_set("refresh_every", "5s"), "Additional properties are not allowed"),
        (_set("panel/0/type", "piechart"), "no schema vendored for panel type 'piechart'"),
    ],
)
def test_the_schemas_reject_a_broken_dashboard(
    dashboard: dict[str, Any], mutation: Callable[[dict[str, Any]], None], expected: str
) -> None:
    broken = copy.deepcopy(dashboard)
    mutation(broken)
    errors = dashboard_errors(broken)
    assert any(expected in e for e in errors), errors


def test_a_heatmap_with_bad_options_is_rejected(dashboard: dict[str, Any]) -> None:
    broken = copy.deepcopy(dashboard)
    heatmap = next(p for p in all_panels(broken) if p["type"] == "heatmap")
    heatmap["options"]["color"]["steps"] = 1000  # the plugin allows 2 to 128
    del heatmap["options"]["yAxis"]
    errors = dashboard_errors(broken)
    assert any("1000 is greater than the maximum of 128" in e for e in errors), errors
    assert any("'yAxis' is a required property" in e for e in errors), errors


def test_the_dashboard_is_laid_out_in_rows_without_overlap(dashboard: dict[str, Any]) -> None:
    panels = dashboard["panels"]
    assert [p["title"] for p in panels if p["type"] == "row"] == ROWS
    assert panels[0]["type"] == "row", "a panel above the first row"
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, f"{panel['title']} runs off the grid"
        for y in range(g["y"], g["y"] + g["h"]):
            for x in range(g["x"], g["x"] + g["w"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] != "row":
            assert panel["title"] and panel.get("description"), f"panel {panel['id']} unexplained"


def test_the_dashboard_uses_only_provisioned_datasources(
    dashboard: dict[str, Any], datasources: dict[str, dict[str, Any]]
) -> None:
    refs = [p["datasource"] for p in all_panels(dashboard) if "datasource" in p]
    refs += [t["datasource"] for p in all_panels(dashboard) for t in p.get("targets", [])]
    refs += [v["datasource"] for v in dashboard["templating"]["list"] if "datasource" in v]
    assert refs
    for ref in refs:
        assert ref["uid"] in datasources, f"datasource uid {ref['uid']} is not provisioned"
        assert datasources[ref["uid"]]["type"] == ref["type"]
    assert {ref["type"] for ref in refs} == {"prometheus", "tempo"}
    links = [link for p in all_panels(dashboard) for link in p.get("links", [])]
    links += dashboard.get("links", [])
    assert any("orstream-tempo" in link.get("url", "") for link in links), "no link to traces"


def test_the_variables_come_from_the_hop_latency_histogram(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"site", "room", "stream", "rendition"} <= set(variables)
    for name in ("site", "room", "stream", "rendition"):
        query = variables[name]["query"]
        assert query.startswith("label_values(orstream_hop_latency_milliseconds_bucket")
        assert query.endswith(f", {name})")
    used = {m for e in expressions(dashboard) for m in re.findall(r"\$(\w+)", e)}
    builtin = {"__rate_interval", "__range", "__interval"}
    assert used - builtin <= set(variables), (
        f"undefined variables {used - builtin - set(variables)}"
    )
    assert {"site", "room", "stream", "rendition"} <= used, "a variable that filters nothing"


def test_the_dashboard_covers_every_orstream_metric(dashboard: dict[str, Any]) -> None:
    queried = {name for e in expressions(dashboard) for name in metric_names(e)}
    declared = [
        value
        for key, value in vars(observability).items()
        if key.isupper() and isinstance(value, str) and value.startswith("orstream.")
    ]
    assert len(declared) >= 10
    for metric in declared:
        prefix = metric.replace(".", "_")
        assert any(name.startswith(prefix) for name in queried), f"no panel shows {metric}"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.5, sum by (le, hop) (rate(orstream_hop_latency_milliseconds_bucket{hop!~"a|b"}[$__rate_interval])))',
            {"orstream_hop_latency_milliseconds_bucket"},
        ),
        ("sum(rate(a_total[1m])) / on (job) group_left (x) b_info * 8", {"a_total", "b_info"}),
        ('count by (service_name) (target_info{service_namespace="orstream"})', {"target_info"}),
        ("up and on() vector(1) or absent(nope_total)", {"up", "nope_total"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# --- the configuration files ------------------------------------------------------------------


def host_port(address: str) -> tuple[str, int]:
    address = re.sub(r"^\w+://", "", address).split("/")[0]
    host, _, port = address.rpartition(":")
    return host, int(port)


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    result: dict[str, Any] = load_yaml(OBSERVABILITY / "otel-collector.yaml")
    return result


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    result: dict[str, Any] = load_yaml(OBSERVABILITY / "prometheus.yml")
    return result


def scrape_targets(prometheus: dict[str, Any]) -> dict[str, set[tuple[str, int]]]:
    """``host:port`` of every job, from static and DNS (A record) discovery."""
    targets: dict[str, set[tuple[str, int]]] = {}
    for job in prometheus["scrape_configs"]:
        found = targets.setdefault(job["job_name"], set())
        for static in job.get("static_configs", []):
            found.update(host_port(t) for t in static["targets"])
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", "SRV records carry their own ports"
            found.update((name, dns["port"]) for name in dns["names"])
    return targets


def test_the_collector_pipelines_use_what_is_defined(collector: dict[str, Any]) -> None:
    service = collector["service"]
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    assert set(service["pipelines"]) == {"traces", "metrics"}
    for name, pipeline in service["pipelines"].items():
        assert pipeline["processors"][0] == "memory_limiter", f"{name}: memory_limiter not first"
        assert "batch" in pipeline["processors"], f"{name}: no batch processor"
        for kind in used:
            assert pipeline[kind], f"{name} has no {kind}"
            for component in pipeline[kind]:
                assert component in collector[kind], f"{name}: {component} is not defined"
                used[kind].add(component)
    for kind, names in used.items():
        assert set(collector[kind]) == names, f"{kind} defined but unused"
    assert service["extensions"] == ["health_check"] and "health_check" in collector["extensions"]
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert host_port(protocols["grpc"]["endpoint"]) == ("0.0.0.0", 4317)
    assert host_port(protocols["http"]["endpoint"]) == ("0.0.0.0", 4318)
    traces = [collector["exporters"][e] for e in service["pipelines"]["traces"]["exporters"]]
    assert [e.get("tls", {}).get("insecure") for e in traces] == [True]


def test_traces_go_to_tempo_and_grafana_reads_them_there(
    collector: dict[str, Any], datasources: dict[str, dict[str, Any]]
) -> None:
    tempo = load_yaml(OBSERVABILITY / "tempo.yaml")
    exporter = collector["exporters"][collector["service"]["pipelines"]["traces"]["exporters"][0]]
    grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert host_port(exporter["endpoint"]) == ("tempo", host_port(grpc)[1])
    assert host_port(grpc)[0] == "0.0.0.0", "Tempo listens on localhost only"
    assert tempo["storage"]["trace"]["backend"] == "local"
    (source,) = [s for s in datasources.values() if s["type"] == "tempo"]
    assert host_port(source["url"]) == ("tempo", tempo["server"]["http_listen_port"])
    exemplars = next(s for s in datasources.values() if s["type"] == "prometheus")["jsonData"]
    assert {d["datasourceUid"] for d in exemplars["exemplarTraceIdDestinations"]} == {source["uid"]}


def test_prometheus_scrapes_the_services_and_the_collector(
    collector: dict[str, Any], prometheus: dict[str, Any], datasources: dict[str, Any]
) -> None:
    targets = scrape_targets(prometheus)
    readme = README.read_text()
    for service, port in METRICS_PORTS.items():
        assert targets[f"orstream-{service}"] == {(service, port)}
        assert f"`{service}:{port}`" in readme, f"README.md does not give {service}'s port"
    exported = collector["exporters"]["prometheus"]["endpoint"]
    assert targets["otel-collector-otlp"] == {("otel-collector", host_port(exported)[1])}
    assert next(j for j in prometheus["scrape_configs"] if j["job_name"] == "otel-collector-otlp")[
        "honor_labels"
    ], "the collector's job/instance labels would be renamed exported_*"
    (reader,) = collector["service"]["telemetry"]["metrics"]["readers"]
    own = reader["pull"]["exporter"]["prometheus"]
    assert own["host"] == "0.0.0.0"
    assert targets["otel-collector"] == {("otel-collector", own["port"])}
    (source,) = [s for s in datasources.values() if s["type"] == "prometheus"]
    assert targets["prometheus"] == {("localhost", host_port(source["url"])[1])}
    interval = prometheus["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == interval, "$__rate_interval would be wrong"


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(OBSERVABILITY / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_kubernetes_job_keeps_annotated_pods_only() -> None:
    config = load_yaml(OBSERVABILITY / "prometheus-kubernetes.yml")
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    rules = job["relabel_configs"]
    keep = rules[0]
    assert keep["action"] == "keep" and keep["regex"] == "true"
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    targets = {r.get("target_label") for r in rules}
    assert {"__metrics_path__", "job"} <= targets
    # One target per container port serving /metrics: a room pod's ingest (port "metrics") and
    # encoder ("metrics-enc") both, the edge and viewer ("http"), metadata ("health"); NATS's
    # client or cluster ports never.
    ports = next(
        r for r in rules if r.get("source_labels") == ["__meta_kubernetes_pod_container_port_name"]
    )
    assert ports["action"] == "keep"
    for name in ("metrics", "metrics-enc", "health", "http"):
        assert re.fullmatch(ports["regex"], name), name
    for name in ("client", "cluster", "monitor", "turn-udp"):
        assert not re.fullmatch(ports["regex"], name), name
    job_rule = next(r for r in rules if r.get("target_label") == "job")
    assert job_rule["source_labels"] == ["__meta_kubernetes_pod_container_name"]


def test_grafana_loads_the_dashboards_from_the_documented_mount() -> None:
    files = sorted((PROVISIONING / "dashboards").glob("*.yaml"))
    assert files
    (provider,) = [p for f in files for p in load_yaml(f)["providers"]]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    readme = README.read_text()
    assert f"grafana/dashboards:{path}" in readme, "README.md does not mount the dashboards there"
    assert "grafana/provisioning:/etc/grafana/provisioning" in readme
    uid = load_json(DASHBOARD)["uid"]
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid)


def test_the_schemas_say_where_they_come_from() -> None:
    notes = (SCHEMAS / "README.md").read_text()
    assert (SCHEMAS / "LICENSE").read_text().lstrip().startswith("Apache License")
    for schema in sorted(SCHEMAS.glob("*.jsonschema.json")):
        assert schema.name in notes, f"{schema.name} has no provenance in schema/README.md"
    assert re.search(r"\b[0-9a-f]{40}\b", notes), "no commit named"


# --- against a running stack ------------------------------------------------------------------


#: A role whose de-identification profile names an option that does not exist: the metadata
#: service fails closed for it on every context (the role gets nothing), and counts an error.
MISCONFIGURED_ROLE = {"rooms": ["*/*"], "streams": [], "metadata": "basic+no-such-option"}


@pytest.fixture
def stack(
    nats_url: str, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    policy = load_yaml(Path(orstream.common.__file__).with_name("policy.yaml"))
    policy["roles"]["registrar"] = MISCONFIGURED_ROLE
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    monkeypatch.setenv("ORSTREAM_POLICY_FILE", str(policy_file))
    config = StackConfig(
        site=f"obs{uuid.uuid4().hex[:6]}",
        # the demo context: a DICOM-RTV grain a second, so the metadata service works too
        source="testpattern:?size=320x180&fps=25&context=demo",
        nats_url=nats_url,
        state_dir=state_dir,
        log_dir=tmp_path / "logs",
        ice_host_addresses=["127.0.0.1"],
        services=("ingest", "encoder", "metadata", "signaling", "viewer"),
    )
    with Stack(config) as s:
        yield s


async def _notify_frames_that_do_not_match(stack: Stack) -> None:
    """Frame notifications whose size is not the stream's: the encoder drops them (format)."""
    nc = await nats.connect(stack.nats_url)
    try:
        for seq in range(3):
            now_ns = time.time_ns()
            note = FrameReady(stack.stream.ring_name, 0, seq, 16, 16, "gray", now_ns, now_ns)
            await nc.publish(stack.stream.frame(), note.encode())
            await asyncio.sleep(0.05)
        await nc.flush()
    finally:
        await nc.drain()


def metrics_url(stack: Stack, service: str) -> str:
    """Where ``service`` serves ``/metrics``: beside ``/stats``; the viewer on its HTTP port."""
    if service == "viewer":
        return f"{stack.viewer_url}/metrics"
    return stack.stats_url(service).removesuffix("/stats") + "/metrics"


def scrape(url: str) -> dict[str, list[dict[str, str]]]:
    """The samples of a ``/metrics`` page: their labels by sample name. Checks the page is
    something Prometheus 3 reads (it refuses a page without a known content type)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        content_type = response.headers.get("Content-Type", "")
        text = response.read().decode()
    assert content_type.startswith(KNOWN_CONTENT_TYPES), f"{url}: Content-Type {content_type!r}"
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


@pytest.mark.integration
@pytest.mark.slow
async def test_every_queried_metric_is_exported_by_the_services(
    stack: Stack, dashboard: dict[str, Any]
) -> None:
    """Runs the stack through what every panel shows, the faults included (counters appear on
    /metrics only once counted): a peer watching, a refused offer, a picture loss, frame
    notifications that do not match the stream, contexts a role's view fails on."""
    site, room, stream = stack.stream.site, stack.stream.room, stack.stream.stream
    token = make_token("surgeon", [f"{site}/*"])
    async with httpx.AsyncClient() as http:
        denied = await http.post(
            stack.whep_url(), content="v=0", headers={"Content-Type": "application/sdp"}
        )
        assert denied.status_code == 401, denied.text
        # … and one refused for its role: a token for another room of the site.
        other_room = make_token("student", [f"{site}/elsewhere"])
        forbidden = await http.post(
            stack.whep_url(),
            content="v=0",
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {other_room}"},
        )
        assert forbidden.status_code == 403, forbidden.text
    async with Probe(stack.whep_url(), token) as probe:
        await probe.measure(seconds=3.0)
        stats = await probe.pc.getStats()
        ssrc = next(s.ssrc for s in stats.values() if s.type == "inbound-rtp")
        await probe.pc.getReceivers()[0]._send_rtcp_pli(ssrc)  # picture loss: a keyframe request
        await _notify_frames_that_do_not_match(stack)
        await probe.measure(seconds=3.0)
        # scrape while the peer still watches: the peers gauge and the edge's hops are live
        samples: dict[str, list[dict[str, str]]] = {}
        for service in METRICS_PORTS:
            for name, labels in scrape(metrics_url(stack, service)).items():
                samples.setdefault(name, []).extend(labels)

    queried = {name for e in expressions(dashboard) for name in metric_names(e)}
    missing = sorted(queried - set(samples))
    assert not missing, f"queried by the dashboard, served by no service: {missing}"

    hops = {
        labels["hop"]
        for labels in samples["orstream_hop_latency_milliseconds_bucket"]
        if (labels.get("site"), labels.get("room"), labels.get("stream")) == (site, room, stream)
    }
    expected = set(observability.HOPS) - {observability.HOP_VIEWER}
    assert expected <= hops, f"hops without a histogram: {sorted(expected - hops)}"

    unlabelled = sorted(
        {
            f"{metric} has no {label} (needed by {expr})"
            for expr in expressions(dashboard)
            for metric, label in labels_needed(expr)
            if not any(s.get(label) for s in samples[metric])  # a value, not the filler ""
        }
    )
    assert not unlabelled, "\n".join(unlabelled)
    target = samples["target_info"]
    assert {s.get("service_namespace") for s in target} == {"orstream"}
    names = {s.get("service_name") for s in target}
    assert {f"orstream-{x}" for x in ("ingest", "encoder", "metadata", "signaling")} <= names


def labels_needed(expr: str) -> set[tuple[str, str]]:
    """(metric, label) pairs ``expr`` needs on its series: labels it groups by, and labels its
    matchers require (not those a series without the label meets: ``!=``, ``!~``, ``…|``)."""
    needed = set()
    for metric, matchers in selectors(expr):
        for label, (op, value) in matchers.items():
            if op not in ("!=", "!~") and not value.endswith("|"):
                needed.add((metric, label))
    for metric in metric_names(expr):
        needed.update((metric, label) for label in grouping_labels(expr) - {"le"})
    return needed
