"""``docker-compose.yml`` holds together without a Docker engine at hand:

- it is valid by the Compose Specification's JSON Schema (the project's copy in
  ``deploy/schema/``, draft-07), and that validation does reject a broken document;
- it runs every service of the workspace (``services/*`` with a ``pyproject.toml``), NATS,
  coturn and the observability stack of ``deploy/observability/README.md``, each image pinned;
- each orstream service is built from its own ``Dockerfile`` with the repository as context, is
  health-checked, and is set only ``ORSTREAM_*`` variables its settings class has, with values
  it accepts; ingest and the encoder share the frame ring's ``/dev/shm``;
- the secrets two services must agree on agree (NATS users and passwords, the TURN secret), and
  every file mounted from the repository exists.

Where a Docker daemon answers, one image (metadata) is really built and run against NATS with
the compose stack's configuration; otherwise that one test is skipped.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from orstream.common.config import CommonSettings
from orstream.common.shm import SHM_DIR

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "deploy" / "schema" / "compose-spec.schema.json"
NATS_CONF = ROOT / "deploy" / "compose" / "nats" / "nats.conf"
OBSERVABILITY_README = ROOT / "deploy" / "observability" / "README.md"
PROMETHEUS_FILE = ROOT / "deploy" / "observability" / "prometheus.yml"
DOCKERIGNORE = ROOT / ".dockerignore"

PREFIX = "ORSTREAM_"
#: Services of the stack that are not orstream's own.
INFRASTRUCTURE = {"nats", "coturn"}
#: Images without a shell or HTTP client, so nothing can run a health check inside them
#: (distroless Tempo, the collector); nothing may wait for them to be healthy.
NO_SHELL = {"tempo", "otel-collector"}
#: Compose's variable syntax: ``$$``, ``$NAME``, ``${NAME}``, ``${NAME<op><arg>}``.
VARIABLE = re.compile(
    r"\$(?:\$|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})"
)


# -- helpers ------------------------------------------------------------------------------------


def interpolate(value: Any, environ: Mapping[str, str]) -> Any:
    """Compose's variable substitution (``${V}``, ``${V:-default}``, ``${V-default}``, ``$$``)
    applied to every string of a document, with ``environ`` as the shell's environment."""
    if isinstance(value, dict):
        return {key: interpolate(item, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environ) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"] or match["bare"], match["op"], match["arg"]
        if name is None:
            return "$"
        if op is None:
            return environ.get(name, "")
        if op in (":-", "-"):
            unset = name not in environ or (op == ":-" and not environ[name])
            return arg if unset else environ[name]
        raise AssertionError(f"{match[0]}: only ${{V}} and ${{V:-default}} are used here")

    return VARIABLE.sub(substitute, value)


def load_compose(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as Compose sees it: YAML (merge keys resolved), then interpolated."""
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    return interpolate(document, environ or {})


def validator_for_schema(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """The validator of the draft the schema names in ``$schema``.

    jsonschema knows each meta-schema by its exact id (``http://…/draft-07/schema#``); the
    compose spec writes ``https://…/draft-07/schema``, for which ``validator_for`` would warn
    and fall back to the newest draft. So ids are compared without scheme and fragment.
    """

    def key(uri: str) -> str:
        return uri.split("://", 1)[-1].rstrip("#")

    wanted = key(schema["$schema"])
    drafts = (
        jsonschema.Draft4Validator,
        jsonschema.Draft6Validator,
        jsonschema.Draft7Validator,
        jsonschema.Draft201909Validator,
        jsonschema.Draft202012Validator,
    )
    for cls in drafts:
        if key(cls.META_SCHEMA["$schema"]) == wanted:
            cls.check_schema(schema)
            return cls(schema)
    raise AssertionError(f"no validator for $schema {schema['$schema']!r}")


def workspace_services() -> dict[str, str]:
    """``services/<dir>`` with a ``pyproject.toml`` → its distribution name."""
    return {
        path.parent.name: tomllib.loads(path.read_text())["project"]["name"]
        for path in sorted((ROOT / "services").glob("*/pyproject.toml"))
    }


def built_from(spec: dict[str, Any]) -> str | None:
    """The orstream service whose Dockerfile builds this compose service's image, if any."""
    build = spec.get("build")
    if not isinstance(build, dict):
        return None
    match = re.fullmatch(r"services/([^/]+)/Dockerfile", build.get("dockerfile", ""))
    return match[1] if match else None


def environment(spec: dict[str, Any]) -> dict[str, str]:
    env = spec.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def repo_mounts(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """``(repo path, container path)`` of each bind mount from the repository (``./…``)."""
    mounts = []
    for volume in spec.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        else:
            source, target = volume.get("source", ""), volume.get("target", "")
        if source.startswith("./"):
            mounts.append((source, target))
    return mounts


def named_mounts(spec: dict[str, Any]) -> dict[str, str]:
    """Named volume → container path."""
    mounts = {}
    for volume in spec.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            if source and not source.startswith(("./", "/", "~")):
                mounts[source] = rest.split(":")[0]
    return mounts


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` out of the build context: the last pattern that
    matches it or one of its parent directories decides (a small model of Docker's rules)."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        candidates = [body, body.removeprefix("**/")] if body.startswith("**/") else [body]
        for prefix in prefixes:
            names = [prefix, *prefix.split("/")] if body.startswith("**/") else [prefix]
            if any(fnmatch.fnmatchcase(n, c) for n in names for c in candidates):
                ignored = not negate
                break
    return ignored


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def schema_validator() -> jsonschema.protocols.Validator:
    return validator_for_schema(json.loads(SCHEMA_FILE.read_text()))


def observability_images() -> dict[str, tuple[str, list[str]]]:
    """The README's compose table: service → (image, repository files it mounts)."""
    rows = {}
    for line in OBSERVABILITY_README.read_text().splitlines():
        if match := re.match(r"^\| `([a-z][a-z0-9-]*)` \| `([^`]+)` \|(.*)$", line):
            cells = match[3].split("|")
            mounts = re.findall(r"`(\./deploy/[^`:]+):[^`]+`", cells[1] if len(cells) > 1 else "")
            rows[match[1]] = (match[2], mounts)
    assert rows, f"no compose table found in {OBSERVABILITY_README}"
    return rows


# -- the document -------------------------------------------------------------------------------


def test_compose_file_is_valid_by_the_compose_specification(
    schema_validator: jsonschema.protocols.Validator, compose: dict[str, Any]
) -> None:
    assert isinstance(schema_validator, jsonschema.Draft7Validator)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in schema_validator.iter_errors(compose)
    ]
    assert errors == []
    # As written too (Compose validates after interpolation; only strings hold variables).
    schema_validator.validate(yaml.safe_load(COMPOSE_FILE.read_text()))


@pytest.mark.parametrize(
    ("broken", "fixed", "where"),
    [
        ({"x": {"ports": 5}}, {"x": {"ports": ["5"]}}, "ports"),
        ({"x": {"healthcheck": {"test": 5}}}, {"x": {"healthcheck": {"test": "true"}}}, "test"),
        (
            {"x": {"depends_on": {"y": {"condition": "when_ready"}}}},
            {"x": {"depends_on": {"y": {"condition": "service_healthy"}}}},
            "depends_on",
        ),
        ({"x": {"read_only": [True]}}, {"x": {"read_only": True}}, "read_only"),
        ({"x": {"no_such_key": True}}, {"x": {"x-own-key": True}}, "x"),
    ],
)
def test_validation_rejects_a_broken_document(
    schema_validator: jsonschema.protocols.Validator,
    broken: dict[str, Any],
    fixed: dict[str, Any],
    where: str,
) -> None:
    """Each broken service fails, where it is broken, and its repaired twin passes."""
    schema_validator.validate({"services": fixed})
    errors = list(schema_validator.iter_errors({"services": broken}))
    assert errors, f"{broken} was accepted"
    assert any(where in [str(p) for p in e.absolute_path] for e in errors), errors


def test_every_service_of_the_stack_is_there(services: dict[str, dict[str, Any]]) -> None:
    expected = set(workspace_services()) | INFRASTRUCTURE | set(observability_images())
    assert expected <= set(services), f"missing: {sorted(expected - set(services))}"
    # The discovery itself finds the services the README names.
    assert {"ingest", "encoder", "metadata", "signaling", "viewer"} <= set(workspace_services())


def test_third_party_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        if "build" in spec:
            assert spec.get("pull_policy") == "build", f"{name}: built images must never be pulled"
            continue
        image = spec["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned"


def test_observability_stack_is_wired_as_its_readme_says(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, (image, mounts) in observability_images().items():
        spec = services[name]
        assert spec["image"] == image, name
        mounted = {source for source, _ in repo_mounts(spec)}
        assert set(mounts) <= mounted, f"{name}: README mounts {mounts}, compose {sorted(mounted)}"
    # Prometheus scrapes each service's /metrics on the port compose serves it on.
    scraped = {
        job["job_name"]: config["port"]
        for job in yaml.safe_load(PROMETHEUS_FILE.read_text())["scrape_configs"]
        for config in job.get("dns_sd_configs", [])
    }
    for service in workspace_services():
        env = environment(services[service])
        port = env.get(f"{PREFIX}HEALTH_PORT") or env.get(f"{PREFIX}HTTP_PORT")
        assert port is not None and scraped[f"orstream-{service}"] == int(port), service


def test_files_mounted_from_the_repository_exist(services: dict[str, dict[str, Any]]) -> None:
    mounts = [(name, source) for name, spec in services.items() for source, _ in repo_mounts(spec)]
    assert mounts
    missing = [(name, source) for name, source in mounts if not (ROOT / source).exists()]
    assert missing == []


def test_health_checks_and_start_order(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        check = spec.get("healthcheck", {})
        if name in NO_SHELL or spec.get("restart") == "no":
            continue
        assert not check.get("disable") and check.get("test"), f"{name} has no health check"
        assert spec.get("restart") in ("unless-stopped", "always", "on-failure"), name
    for name, spec in services.items():
        for dependency, how in spec.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if how.get("condition") == "service_healthy":
                target = services[dependency].get("healthcheck", {})
                assert target.get("test") and not target.get("disable"), (
                    f"{name} waits for {dependency} to be healthy, which it can never be"
                )
    for service in workspace_services():
        if service != "viewer":  # the static server uses no NATS
            assert services[service]["depends_on"]["nats"]["condition"] == "service_healthy"


def test_containers_are_locked_down(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        assert spec.get("read_only") is True, name
        assert spec.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in spec.get("security_opt", []), name
        assert "privileged" not in spec and spec.get("network_mode") != "host", name


# -- the orstream services ----------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(workspace_services()))
def test_service_is_built_from_its_dockerfile(
    service: str, services: dict[str, dict[str, Any]]
) -> None:
    spec = services[service]
    assert spec["build"]["context"] == "."
    assert spec["build"]["dockerfile"] == f"services/{service}/Dockerfile"
    dockerfile = (ROOT / spec["build"]["dockerfile"]).read_text()
    package = workspace_services()[service]
    assert f"--package {package}" in dockerfile
    assert f'ENTRYPOINT ["python", "-m", "orstream.{service}"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/livez" in dockerfile
    user = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("0", "root"), f"{service} runs as root"
    for base in re.findall(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile, re.MULTILINE):
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    env = environment(spec)
    port = env.get(f"{PREFIX}HEALTH_PORT") or env.get(f"{PREFIX}HTTP_PORT")
    assert re.search(rf"^EXPOSE\s.*\b{port}\b", dockerfile, re.MULTILINE), f"{service}: {port}"


@pytest.mark.parametrize("service", sorted(workspace_services()))
def test_image_build_sees_the_whole_workspace(service: str) -> None:
    """``uv sync --locked`` checks the lock against every member: each member's
    ``pyproject.toml`` is copied, and nothing the Dockerfile copies is kept out by
    ``.dockerignore``."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members = sorted(
        path.parent.relative_to(ROOT).as_posix()
        for pattern in root["tool"]["uv"]["workspace"]["members"]
        for path in ROOT.glob(f"{pattern}/pyproject.toml")
    )
    dockerfile = (ROOT / "services" / service / "Dockerfile").read_text()
    copied = [
        source
        for line in re.findall(r"^COPY (?!--)(.+)$", dockerfile, re.MULTILINE)
        for source in line.split()[:-1]
    ]
    for member in members:
        assert f"{member}/pyproject.toml" in copied, f"{service}: {member} not copied"
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in copied:
        path = ROOT / source
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" in relative:
                continue
            assert not docker_ignored(relative, patterns), f"{relative} left out of the context"
    assert docker_ignored(".venv/bin/python", patterns)
    assert (
        docker_ignored(f"services/{service}/tests/conftest.py", patterns)
        or not (ROOT / "services" / service / "tests").exists()
    )


@pytest.mark.parametrize(
    "name", sorted(name for name, spec in load_compose()["services"].items() if built_from(spec))
)
def test_environment_names_real_settings_and_they_validate(
    name: str,
    services: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    settings_class: Callable[[str], type[CommonSettings]],
) -> None:
    spec = services[name]
    service = built_from(spec)
    assert service is not None, f"{name} is not built from a service's Dockerfile"
    cls = settings_class(service)
    env = environment(spec)
    fields = set(cls.model_fields)
    for key in env:
        if key.startswith(PREFIX):
            assert key.removeprefix(PREFIX).lower() in fields, (
                f"{name}: {key} is not a setting of {cls.__name__}"
            )
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(PREFIX):
            monkeypatch.setenv(key, value)
    settings = cls()
    if "ORSTREAM_NATS_URL" in env:
        url = urlsplit(settings.nats_url)
        assert url.scheme == "nats" and url.hostname == "nats" and url.username == service


def test_ingest_and_encoder_share_the_frame_ring(services: dict[str, dict[str, Any]]) -> None:
    ring = {name: named_mounts(spec) for name, spec in services.items()}
    sharing = sorted(name for name, mounts in ring.items() if mounts.get("frames") == str(SHM_DIR))
    assert sharing == ["encoder", "ingest"]
    assert all("ipc" not in spec for spec in services.values())


def test_health_checks_ask_the_port_the_service_serves(services: dict[str, dict[str, Any]]) -> None:
    for service in workspace_services():
        spec = services[service]
        env = environment(spec)
        test = " ".join(spec["healthcheck"]["test"])
        variable = re.search(r"os\.environ\['(ORSTREAM_\w+)'\]", test)
        assert variable and variable[1] in env, f"{service}: {test}"
        assert env.get(f"{PREFIX}HEALTH_HOST", env.get(f"{PREFIX}HTTP_HOST")) == "0.0.0.0", service


# -- secrets two sides must agree on --------------------------------------------------------------


def test_each_service_has_its_own_nats_user(services: dict[str, dict[str, Any]]) -> None:
    """Each orstream service connects as the NATS user named after it, with the password the
    nats container gives that user (nats.conf reads it from the environment)."""
    users = dict(re.findall(r"user:\s*(\w+)\s+password:\s*\$(\w+)", NATS_CONF.read_text()))
    nats_env = environment(services["nats"])
    for service in workspace_services():
        url = environment(services[service]).get(f"{PREFIX}NATS_URL")
        if service == "viewer":
            assert url is None  # the static server uses no NATS
            continue
        assert url is not None, service
        parts = urlsplit(url)
        assert parts.username == service and service in users, f"{service}: user {parts.username}"
        assert parts.password == nats_env[users[service]], f"{service}: password differs"
    assert "admin" in users  # for operators: the nats CLI, auth.revoke


def test_turn_secret_is_the_one_coturn_checks() -> None:
    for environ in ({}, {"ORSTREAM_TURN_SECRET": "site-secret"}):
        services = load_compose(environ)["services"]
        edge = environment(services["signaling"])
        command = services["coturn"]["command"]
        secrets = [
            arg.split("=", 1)[1] for arg in command if arg.startswith("--static-auth-secret=")
        ]
        assert secrets == [edge[f"{PREFIX}TURN_SECRET"]]
        assert secrets[0] == environ.get("ORSTREAM_TURN_SECRET", secrets[0])
    turn_urls = json.loads(edge[f"{PREFIX}TURN_URLS"])
    assert turn_urls and all(":3478?transport=" in url for url in turn_urls)
    assert any(port.endswith(":3478:3478/udp") for port in services["coturn"]["ports"])


# -- a real image, where a Docker daemon answers -------------------------------------------------


def docker_daemon() -> str | None:
    """Why Docker cannot be used here, or None when a daemon answers."""
    if shutil.which("docker") is None:
        return "no docker command"
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    return None if result.returncode == 0 else "no Docker daemon answers (docker info failed)"


def docker(*args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"docker {' '.join(args)}:\n{result.stderr[-3000:]}"
    return result.stdout.strip()


#: How each kind of thing a test created in Docker is removed.
REMOVE = {
    "container": ["rm", "-f"],
    "image": ["rmi", "-f"],
    "volume": ["volume", "rm"],
    "network": ["network", "rm"],
}


@pytest.fixture
def docker_scratch() -> Iterator[dict[str, list[str]]]:
    """What a test creates in Docker (networks, volumes, images, containers), removed after it
    in reverse order; the test is skipped where no Docker daemon answers."""
    if reason := docker_daemon():
        pytest.skip(f"needs Docker to build and run an image: {reason}")
    created: dict[str, list[str]] = {"network": [], "volume": [], "image": [], "container": []}
    try:
        yield created
    finally:
        for kind in ("container", "image", "volume", "network"):
            for name in reversed(created[kind]):
                subprocess.run(["docker", *REMOVE[kind], name], capture_output=True, check=False)


@pytest.mark.integration
@pytest.mark.slow
def test_metadata_image_runs_against_nats(
    docker_scratch: dict[str, list[str]], services: dict[str, dict[str, Any]]
) -> None:
    """Build the metadata image and run it as compose does (read-only, no capabilities, its
    state volume, its NATS user) against the compose stack's NATS image and configuration,
    until it is healthy and ready."""
    spec, nats = services["metadata"], services["nats"]
    suffix = uuid.uuid4().hex[:8]
    tag = f"orstream/metadata:test-{suffix}"
    docker(
        "build", "-f", str(ROOT / spec["build"]["dockerfile"]), "-t", tag, str(ROOT), timeout=1800
    )
    docker_scratch["image"].append(tag)
    network = docker("network", "create", f"orstream-test-{suffix}")
    docker_scratch["network"].append(network)
    state = docker("volume", "create", f"orstream-test-state-{suffix}")
    docker_scratch["volume"].append(state)
    locked_down = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true"]

    def env_args(env: dict[str, str]) -> list[str]:
        return [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]

    nats_container = docker(
        "run", "-d", "--network", network, "--network-alias", "nats", *locked_down,
        "-v", f"{NATS_CONF}:/etc/nats/orstream.conf:ro", "--tmpfs", "/data",
        *env_args(environment(nats)), nats["image"], *nats["command"],
    )  # fmt: skip
    docker_scratch["container"].append(nats_container)
    env = {k: v for k, v in environment(spec).items() if not k.startswith("OTEL_")}
    container = docker(
        "run", "-d", "--network", network, *locked_down, "--tmpfs", "/tmp",
        "-v", f"{state}:/var/lib/orstream", *env_args(env), "--health-interval", "1s", tag,
    )  # fmt: skip
    docker_scratch["container"].append(container)
    deadline = time.monotonic() + 120
    status = ""
    while time.monotonic() < deadline and status != "healthy":
        running = docker("inspect", "-f", "{{.State.Running}}", container)
        assert running == "true", docker("logs", container)
        status = docker("inspect", "-f", "{{.State.Health.Status}}", container)
        time.sleep(1)
    assert status == "healthy", docker("logs", container)
    ready = docker(
        "exec", container, "python", "-c",
        "import urllib.request; print(urllib.request.urlopen("
        "'http://127.0.0.1:9464/readyz', timeout=2).read().decode())",
    )  # fmt: skip
    assert ready == "ready"  # connected to NATS as its own user
    assert docker("exec", container, "id", "-u") == "10000"
