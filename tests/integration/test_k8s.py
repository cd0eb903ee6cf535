"""``deploy/k8s`` renders to a sound deployment, checked without a cluster:

- every overlay renders with ``kubectl kustomize`` (skipped, saying why, without kubectl or with
  one too old for the kustomize features used) and every object is valid by Kubernetes' own
  schemas (``kubernetes-validate``, strict: no unknown fields);
- every container has requests and limits, probes, a restricted non-root securityContext and a
  pinned image (third-party ones at the tags ``docker-compose.yml`` uses);
- every Secret is used and every Secret or ConfigMap used exists; every workload is selected by
  a NetworkPolicy beyond the default deny each namespace has;
- each room is a pod with ingest and the encoder sharing a memory ``/dev/shm`` on its room's
  node; the edge has an HPA and a PDB; NATS is 3 nodes with JetStream on file storage synced
  always; in multi-site the leafnode link lets only enc, meta.role and audit subjects cross;
- every ``ORSTREAM_*`` variable a container gets is a settings field of its service, and the
  settings class accepts the values;

and the checks themselves fail on broken objects.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orstream.common.config import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["single-site", "multi-site"]
#: Kubernetes version whose schemas the objects are validated against.
K8S_VERSION = "1.31.0"
#: kubectl ships kustomize 4.2 from 1.22 on: `labels`, `patches` with targets, merged generators.
#: Debian 12's kubernetes-client is 1.20 (kustomize 2), which renders none of that.
MIN_KUBECTL = (1, 22)
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
ORSTREAM_IMAGE = re.compile(r"ghcr\.io/orstream/(?P<service>[a-z]+):(?P<tag>[^:@/]+)$")
PREFIX = "ORSTREAM_"
#: What may cross sites, and no more (docs/DESIGN.md: multi-site).
CROSS_SITE = {"or.*.*.*.enc.>", "or.*.*.meta.role.>", "audit.>"}
#: A placeholder for values that come from the pod itself (fieldRef) when env is resolved.
POD_NAME = "pod-0"


# -- rendering ----------------------------------------------------------------------------------


def kubectl_problem() -> str | None:
    """Why ``kubectl kustomize`` cannot render the overlays here, or None."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return "kubectl is not installed (Debian: apt-get install kubernetes-client)"
    result = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        client = json.loads(result.stdout)["clientVersion"]
        version = (int(client["major"]), int(re.match(r"\d+", client["minor"])[0]))
    except (ValueError, KeyError, TypeError) as exc:
        return f"cannot read kubectl's version ({exc!r}): {result.stderr.strip()}"
    if version < MIN_KUBECTL:
        return (
            f"kubectl {version[0]}.{version[1]} is older than "
            f"{MIN_KUBECTL[0]}.{MIN_KUBECTL[1]}: its kustomize lacks labels/patches/merged "
            "generators the manifests use"
        )
    return None


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(params=OVERLAYS)
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    if problem := kubectl_problem():
        pytest.skip(problem)
    return copy.deepcopy(list(render(request.param)))


@pytest.fixture
def multi_site() -> list[dict[str, Any]]:
    if problem := kubectl_problem():
        pytest.skip(problem)
    return copy.deepcopy(list(render("multi-site")))


# -- helpers ------------------------------------------------------------------------------------


def kinds(objects: list[dict[str, Any]], *wanted: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] in wanted]


def ident(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta.get('namespace', '-')}/{meta['name']}"


def namespace(obj: dict[str, Any]) -> str:
    return obj["metadata"].get("namespace", "default")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = pod_spec(workload)
    for kind in ("initContainers", "containers"):
        for container in spec.get(kind, []):
            yield kind, container


def find(objects: list[dict[str, Any]], kind: str, ns: str, name: str) -> dict[str, Any] | None:
    for obj in objects:
        if obj["kind"] == kind and namespace(obj) == ns and obj["metadata"]["name"] == name:
            return obj
    return None


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions with In/NotIn/Exists/DoesNotExist)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def service_of(container: dict[str, Any]) -> str | None:
    match = ORSTREAM_IMAGE.match(container.get("image", ""))
    return match["service"] if match else None


def data_of(obj: dict[str, Any]) -> dict[str, str]:
    return {**obj.get("data", {}), **obj.get("stringData", {})}


def container_env(
    objects: list[dict[str, Any]], ns: str, container: dict[str, Any]
) -> dict[str, str]:
    """The environment the container starts with: envFrom, then env (``$(VAR)`` expanded)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                obj = find(objects, kind, ns, source[key]["name"])
                assert obj is not None, f"{kind} {source[key]['name']} missing"
                env.update(data_of(obj))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m[1], m[0]),
                item["value"],
            )
            continue
        ref = item["valueFrom"]
        if "fieldRef" in ref:
            env[item["name"]] = POD_NAME
            continue
        for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            if key in ref:
                obj = find(objects, kind, ns, ref[key]["name"])
                assert obj is not None, f"{kind} {ref[key]['name']} missing"
                env[item["name"]] = data_of(obj)[ref[key]["key"]]
    return env


# -- the invariants, each a list of problems ----------------------------------------------------


def container_problems(workload: dict[str, Any]) -> list[str]:
    problems = []
    pod_security = pod_spec(workload).get("securityContext", {})
    for kind, container in containers(workload):
        where = f"{ident(workload)} {container['name']}"
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(part, {}):
                    problems.append(f"{where}: no {part}.{resource}")
        if kind == "containers":
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in container:
                    problems.append(f"{where}: no {probe}")
        security = container.get("securityContext", {})
        if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
            problems.append(f"{where}: not runAsNonRoot")
        if (security.get("runAsUser", pod_security.get("runAsUser")) or 0) == 0:
            problems.append(f"{where}: may run as uid 0")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation not false")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem writable")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities not dropped (ALL)")
        seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
        if seccomp.get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile not RuntimeDefault")
        image = container.get("image", "")
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if "@sha256:" not in image and (not tag or tag == "latest"):
            problems.append(f"{where}: image {image!r} not pinned")
    return problems


def reference_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Secrets and ConfigMaps used by workloads exist; every Secret is used."""
    used: set[tuple[str, str, str]] = set()
    for workload in kinds(objects, *WORKLOADS):
        ns, spec = namespace(workload), pod_spec(workload)
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                used.add(("Secret", ns, volume["secret"]["secretName"]))
            if "configMap" in volume:
                used.add(("ConfigMap", ns, volume["configMap"]["name"]))
        for _, container in containers(workload):
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    used.add(("Secret", ns, source["secretRef"]["name"]))
                if "configMapRef" in source:
                    used.add(("ConfigMap", ns, source["configMapRef"]["name"]))
            for item in container.get("env", []):
                ref = item.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    used.add(("Secret", ns, ref["secretKeyRef"]["name"]))
                if "configMapKeyRef" in ref:
                    used.add(("ConfigMap", ns, ref["configMapKeyRef"]["name"]))
    problems = [
        f"{kind} {ns}/{name} is used but missing"
        for kind, ns, name in sorted(used)
        if find(objects, kind, ns, name) is None
    ]
    problems += [
        f"{ident(secret)} is used by no workload"
        for secret in kinds(objects, "Secret")
        if ("Secret", namespace(secret), secret["metadata"]["name"]) not in used
    ]
    return problems


def network_policy_problems(objects: list[dict[str, Any]]) -> list[str]:
    problems = []
    policies = kinds(objects, "NetworkPolicy")
    for ns in sorted({namespace(w) for w in kinds(objects, *WORKLOADS)}):
        if not any(
            namespace(p) == ns
            and p["spec"]["podSelector"] == {}
            and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
            for p in policies
        ):
            problems.append(f"namespace {ns}: no default-deny NetworkPolicy")
    for workload in kinds(objects, *WORKLOADS):
        labels = workload["spec"]["template"]["metadata"].get("labels", {})
        if not any(
            namespace(p) == namespace(workload)
            and p["spec"]["podSelector"] != {}
            and selects(p["spec"]["podSelector"], labels)
            for p in policies
        ):
            problems.append(f"{ident(workload)}: selected by no NetworkPolicy of its own")
    return problems


def room_problems(workload: dict[str, Any]) -> list[str]:
    where, spec = ident(workload), pod_spec(workload)
    names = {c["name"] for c in spec["containers"]}
    problems = [
        f"{where}: no {name} container" for name in ("ingest", "encoder") if name not in names
    ]
    shm = [
        v["name"]
        for v in spec.get("volumes", [])
        if v.get("emptyDir", {}).get("medium") == "Memory" and v["emptyDir"].get("sizeLimit")
    ]
    for container in spec["containers"]:
        if container["name"] in ("ingest", "encoder") and not any(
            m["mountPath"] == "/dev/shm" and m["name"] in shm
            for m in container.get("volumeMounts", [])
        ):
            problems.append(f"{where} {container['name']}: no memory emptyDir at /dev/shm")
    room = workload["metadata"].get("labels", {}).get("orstream.io/room")
    if not room or spec.get("nodeSelector", {}).get("orstream.io/room") != room:
        problems.append(f"{where}: not pinned to its room's node (orstream.io/room={room})")
    if workload["kind"] == "Deployment" and (
        workload["spec"].get("replicas") != 1
        or workload["spec"].get("strategy", {}).get("type") != "Recreate"
    ):
        problems.append(f"{where}: not 1 replica with strategy Recreate")
    return problems


def rooms(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        w
        for w in kinds(objects, *WORKLOADS)
        if w["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "room"
    ]


def leaf_permissions(authorization: str) -> dict[str, set[str]]:
    """The publish and subscribe allow lists of user ``leaf`` in a NATS authorization block."""
    match = re.search(
        r"user:\s*leaf\s.*?permissions:\s*\{(?P<body>.*?)\n      \}", authorization, re.S
    )
    assert match, "no user leaf with permissions"
    found = {}
    for verb in ("publish", "subscribe"):
        allow = re.search(verb + r":\s*\{\s*allow:\s*\[(?P<list>[^\]]*)\]", match["body"])
        assert allow, f"leaf: no {verb} allow list"
        found[verb] = set(re.findall(r'"([^"]+)"', allow["list"]))
    assert "deny" not in match["body"], "leaf: deny lists are not checked here"
    return found


# -- tests --------------------------------------------------------------------------------------


def test_objects_are_valid_kubernetes(objects: list[dict[str, Any]]) -> None:
    assert objects
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{ident(obj)}: {exc.message} at {list(exc.path)}")


def test_containers_are_hardened_and_pinned(objects: list[dict[str, Any]]) -> None:
    workloads = kinds(objects, *WORKLOADS)
    assert workloads
    assert [p for w in workloads for p in container_problems(w)] == []
    for workload in workloads:
        spec = pod_spec(workload)
        assert spec.get("automountServiceAccountToken") is False, ident(workload)
        account = spec.get("serviceAccountName")
        assert account and find(objects, "ServiceAccount", namespace(workload), account), ident(
            workload
        )


def test_third_party_images_as_compose_pins_them(objects: list[dict[str, Any]]) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    pinned = {spec["image"] for spec in compose.values() if "image" in spec}
    for workload in kinds(objects, *WORKLOADS):
        for _, container in containers(workload):
            image = container["image"]
            match = ORSTREAM_IMAGE.match(image)
            if match:
                assert match["tag"] != "dev", image
            else:
                assert image in pinned, f"{image}: not the tag docker-compose.yml uses"


def test_secrets_and_config_maps_are_referenced(objects: list[dict[str, Any]]) -> None:
    assert kinds(objects, "Secret")
    assert reference_problems(objects) == []
    for secret in kinds(objects, "Secret"):
        for key, value in data_of(secret).items():
            assert "CHANGE-ME" in value, f"{ident(secret)} {key}: not a marked placeholder"


def test_network_policies(objects: list[dict[str, Any]]) -> None:
    assert network_policy_problems(objects) == []


def test_rooms_share_memory_on_their_node(objects: list[dict[str, Any]]) -> None:
    found = rooms(objects)
    assert len(found) >= 3
    assert [p for w in found for p in room_problems(w)] == []
    for workload in found:
        room = workload["metadata"]["labels"]["orstream.io/room"]
        env = {
            c["name"]: container_env(objects, namespace(workload), c)
            for c in pod_spec(workload)["containers"]
        }
        assert env["ingest"]["ORSTREAM_ROOM"] == room
        assert json.loads(env["encoder"]["ORSTREAM_ROOMS"]) == [room]
        assert env["ingest"]["ORSTREAM_HEALTH_PORT"] != env["encoder"]["ORSTREAM_HEALTH_PORT"]


def test_edge_scales_and_survives_drains(objects: list[dict[str, Any]]) -> None:
    edges = [
        w
        for w in kinds(objects, "Deployment")
        if any(service_of(c) == "signaling" for _, c in containers(w))
    ]
    assert edges
    for edge in edges:
        ns, name = namespace(edge), edge["metadata"]["name"]
        hpas = [
            h
            for h in kinds(objects, "HorizontalPodAutoscaler")
            if namespace(h) == ns and h["spec"]["scaleTargetRef"]["name"] == name
        ]
        assert hpas and hpas[0]["apiVersion"] == "autoscaling/v2", ident(edge)
        assert any(m["resource"]["name"] == "cpu" for m in hpas[0]["spec"]["metrics"])
        labels = edge["spec"]["template"]["metadata"]["labels"]
        assert any(
            namespace(p) == ns and selects(p["spec"]["selector"], labels)
            for p in kinds(objects, "PodDisruptionBudget")
        ), f"{ident(edge)}: no PodDisruptionBudget"
        services = [
            s
            for s in kinds(objects, "Service")
            if namespace(s) == ns
            and selects({"matchLabels": s["spec"].get("selector", {})}, labels)
        ]
        assert any(p["port"] == 8081 for s in services for p in s["spec"]["ports"])


def test_nats_three_nodes_jetstream_synced(objects: list[dict[str, Any]]) -> None:
    sets = [s for s in kinds(objects, "StatefulSet") if s["metadata"]["name"] == "nats"]
    assert sets
    for nats in sets:
        ns = namespace(nats)
        assert nats["spec"]["replicas"] == 3
        headless = find(objects, "Service", ns, nats["spec"]["serviceName"])
        assert headless and headless["spec"]["clusterIP"] == "None"
        assert [c["metadata"]["name"] for c in nats["spec"]["volumeClaimTemplates"]] == ["data"]
        mounts = {
            m["name"]: m["mountPath"] for m in pod_spec(nats)["containers"][0]["volumeMounts"]
        }
        assert mounts["data"] == "/data"
        config_name = next(
            v["configMap"]["name"] for v in pod_spec(nats)["volumes"] if "configMap" in v
        )
        config = find(objects, "ConfigMap", ns, config_name)
        assert config
        conf = config["data"]["nats.conf"]
        jetstream = re.search(r"jetstream\s*\{(?P<body>[^}]*)\}", conf)
        assert jetstream, "no jetstream block"
        assert re.search(r"^\s*store_dir:\s*/data\s*$", jetstream["body"], re.M)
        assert re.search(r"^\s*sync_interval:\s*always\s*$", jetstream["body"], re.M)
        for included in re.findall(r"^include\s+\./(\S+)", conf, re.M):
            assert included in config["data"], f"{included} not in the ConfigMap"
        routes = re.findall(r"nats://(nats-\d)\.nats-headless:6222", conf)
        assert sorted(routes) == ["nats-0", "nats-1", "nats-2"]


def test_multi_site_links_only_what_may_cross(multi_site: list[dict[str, Any]]) -> None:
    configs = {
        namespace(c): c["data"]
        for c in kinds(multi_site, "ConfigMap")
        if c["metadata"]["name"].startswith("nats-config")
    }
    assert sorted(configs) == ["orstream-site-a", "orstream-site-b"]
    hub, spoke = configs["orstream-site-a"], configs["orstream-site-b"]
    assert re.search(r"leafnodes\s*\{\s*port:\s*7422\s*\}", hub["leafnodes.conf"])
    assert "remotes" in spoke["leafnodes.conf"] and "url: $NATS_LEAF_URL" in spoke["leafnodes.conf"]
    for deny in ("deny_exports", "deny_imports"):
        listed = re.search(deny + r":\s*\[([^\]]*)\]", spoke["leafnodes.conf"])
        assert listed, deny
        assert {"or.*.*.*.frame", "or.*.*.meta.in"} <= set(re.findall(r'"([^"]+)"', listed[1]))
    permissions = leaf_permissions(hub["authorization.conf"])
    assert permissions == {"publish": CROSS_SITE, "subscribe": CROSS_SITE}
    # The spoke's NATS gets the URL, the password first so that $(…) expands.
    nats_b = find(multi_site, "StatefulSet", "orstream-site-b", "nats")
    assert nats_b
    names = [e["name"] for e in pod_spec(nats_b)["containers"][0]["env"]]
    assert names.index("NATS_LEAF_PASSWORD") < names.index("NATS_LEAF_URL")
    env = container_env(multi_site, "orstream-site-b", pod_spec(nats_b)["containers"][0])
    assert env["NATS_LEAF_URL"].startswith("nats-leaf://leaf:CHANGE-ME")
    assert "nats-leafnodes.orstream-site-a.svc:7422" in env["NATS_LEAF_URL"]
    assert find(multi_site, "Service", "orstream-site-a", "nats-leafnodes")
    sites = {
        namespace(c): c["data"]["ORSTREAM_SITE"]
        for c in kinds(multi_site, "ConfigMap")
        if c["metadata"]["name"].startswith("orstream-site")
    }
    assert sites == {"orstream-site-a": "site-a", "orstream-site-b": "site-b"}


def test_orstream_env_is_real_settings(
    objects: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    settings_class: Callable[[str], type[CommonSettings]],
) -> None:
    checked = set()
    for workload in kinds(objects, *WORKLOADS):
        for _, container in containers(workload):
            service = service_of(container)
            env = container_env(objects, namespace(workload), container)
            orstream = {k: v for k, v in env.items() if k.startswith(PREFIX)}
            if service is None:
                assert not orstream, f"{ident(workload)} {container['name']}: {sorted(orstream)}"
                continue
            cls = settings_class(service)
            unknown = sorted(
                k for k in orstream if k.removeprefix(PREFIX).lower() not in cls.model_fields
            )
            assert unknown == [], f"{ident(workload)} {container['name']} ({service}): {unknown}"
            with monkeypatch.context() as patched:
                for key in list(os.environ):
                    if key.startswith(PREFIX):
                        patched.delenv(key)
                for key, value in orstream.items():
                    patched.setenv(key, value)
                settings = cls()
            assert settings.site == orstream["ORSTREAM_SITE"]
            checked.add(service)
    assert checked == {"ingest", "encoder", "metadata", "signaling", "viewer"}


# -- the checks catch what they are for ----------------------------------------------------------


def test_checks_fail_on_broken_objects(objects: list[dict[str, Any]]) -> None:
    room = rooms(objects)[0]
    ingest = next(c for c in pod_spec(room)["containers"] if c["name"] == "ingest")

    broken = copy.deepcopy(room)
    next(c for c in pod_spec(broken)["containers"] if c["name"] == "ingest")["resources"].pop(
        "limits"
    )
    assert any("no limits.cpu" in p for p in container_problems(broken))

    broken = copy.deepcopy(room)
    next(c for c in pod_spec(broken)["containers"] if c["name"] == "encoder").pop("readinessProbe")
    assert any("no readinessProbe" in p for p in container_problems(broken))

    for image in ("ghcr.io/orstream/ingest", "ghcr.io/orstream/ingest:latest", "localhost:5000/x"):
        broken = copy.deepcopy(room)
        pod_spec(broken)["containers"][0]["image"] = image
        assert any("not pinned" in p for p in container_problems(broken)), image

    broken = copy.deepcopy(room)
    pod_spec(broken)["securityContext"].pop("runAsNonRoot")
    pod_spec(broken)["containers"][0]["securityContext"] = {
        **ingest["securityContext"],
        "runAsNonRoot": False,
        "allowPrivilegeEscalation": True,
        "capabilities": {"drop": ["NET_RAW"]},
    }
    problems = container_problems(broken)
    for expected in ("not runAsNonRoot", "allowPrivilegeEscalation", "capabilities not dropped"):
        assert any(expected in p for p in problems), expected

    broken = copy.deepcopy(room)
    pod_spec(broken)["containers"] = [
        c for c in pod_spec(broken)["containers"] if c["name"] != "encoder"
    ]
    assert any("no encoder container" in p for p in room_problems(broken))
    broken = copy.deepcopy(room)
    shm = next(v for v in pod_spec(broken)["volumes"] if v["name"] == "shm")
    shm["emptyDir"].pop("medium")
    assert any("/dev/shm" in p for p in room_problems(broken))
    broken = copy.deepcopy(room)
    pod_spec(broken).pop("nodeSelector")
    assert any("room's node" in p for p in room_problems(broken))

    # A workload referring to a Secret that is not there; a Secret nobody uses.
    broken_all = copy.deepcopy(objects)
    ns = namespace(room)
    target = rooms(broken_all)[0]
    next(c for c in pod_spec(target)["containers"] if c["name"] == "ingest")["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k"}}}
    )
    broken_all.append(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "orphan", "namespace": ns}}
    )
    problems = reference_problems(broken_all)
    assert f"Secret {ns}/missing is used but missing" in problems
    assert f"Secret {ns}/orphan is used by no workload" in problems

    # No default deny; a workload no policy of its own selects.
    broken_all = [
        o
        for o in copy.deepcopy(objects)
        if not (o["kind"] == "NetworkPolicy" and o["spec"]["podSelector"] == {})
    ]
    rooms(broken_all)[0]["spec"]["template"]["metadata"]["labels"] = {"app.kubernetes.io/name": "x"}
    problems = network_policy_problems(broken_all)
    assert any("no default-deny" in p for p in problems)
    assert any("selected by no NetworkPolicy" in p for p in problems)

    # Schemas: an unknown field, a wrong type.
    broken = copy.deepcopy(room)
    pod_spec(broken)["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = copy.deepcopy(room)
    broken["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_leaf_permission_check_catches_widening() -> None:
    wide = """
      user: leaf
      password: $P
      permissions: {
        publish: {
          allow: ["or.*.*.*.enc.>", "or.>", "audit.>"]
        }
        subscribe: {
          allow: ["or.*.*.*.enc.>", "or.*.*.meta.role.>", "audit.>"]
        }
      }
    }"""
    assert leaf_permissions(wide)["publish"] != CROSS_SITE


def test_settings_check_catches_unknown_names(
    objects: list[dict[str, Any]], settings_class: Callable[[str], type[CommonSettings]]
) -> None:
    cls = settings_class("ingest")
    assert "room" in cls.model_fields
    assert "rooms" not in cls.model_fields  # the encoder's, not ingest's
