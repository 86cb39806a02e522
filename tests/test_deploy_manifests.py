"""Kubernetes manifests (deploy/k8s): schema-valid for the Kubernetes versions we support, and wired
together (Services to pods, ServiceMonitor to Service, probes, GPU, config, sharding environment).

Schemas work offline: `kubernetes-validate` ships Kubernetes' JSON schemas (strict: unknown fields
are errors) in its wheel; the ServiceMonitor CRD is not a core type, so it is checked with
`jsonschema` against a vendored subset (deploy/schemas/servicemonitor.v1.subset.json).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

try:
    import jsonschema
    import kubernetes_validate
except ImportError as exc:  # a clear failure, not a skip: these checks must run in CI
    raise ImportError(f"{exc.name} is missing: pip install -e '.[dev]'") from exc

from services.commands.doctor import stream_shm_bytes
from shared.settings import Settings, load_settings
from shared.sharding import POD_NAME_ENV, REPLICAS_ENV, shard_from_env

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # the oldest release still widely run, and the newest the wheel ships
SERVICEMONITOR_SCHEMA = REPO / "deploy" / "schemas" / "servicemonitor.v1.subset.json"
EXTERNAL_OBJECTS = {("Secret", "stylecast-api"), ("PersistentVolumeClaim", "stylecast-models")}  # made by the operator


def _docs() -> list[tuple[str, dict]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc is not None:
                found.append((name, doc))
    return found


def _one(kind: str, name: str | None = None) -> dict:
    matches = [d for _, d in _docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, (kind, name, len(matches))
    return matches[0]


def _schema_problems(doc: dict, version: str) -> list[str]:
    if doc["kind"] == "ServiceMonitor":
        validator = jsonschema.Draft202012Validator(json.loads(SERVICEMONITOR_SCHEMA.read_text()))
        return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path)) or '(top)'}: {exc.message}"]
    return []


def _labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _container() -> dict:
    [container] = _one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    return container


# --------------------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_each_exists() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert all((K8S / name).is_file() for name in listed)
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk, "a manifest is not applied by `kubectl apply -k`, or one is missing"
    kinds = sorted(d["kind"] for _, d in _docs())
    assert kinds == ["ConfigMap", "Namespace", "Service", "Service", "ServiceMonitor", "StatefulSet"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_their_schemas(version: str) -> None:
    problems = [f"{name} {doc['kind']}/{doc['metadata']['name']}: {p}" for name, doc in _docs() for p in _schema_problems(doc, version)]
    assert not problems, "\n".join(problems)


def test_schema_checks_catch_mistakes() -> None:
    # The checks themselves must fail on a wrong manifest, or the test above proves nothing.
    statefulset = copy.deepcopy(_one("StatefulSet"))
    statefulset["spec"]["replica"] = 3
    assert any("'replica' was unexpected" in p for p in _schema_problems(statefulset, "1.37.0"))
    probe = copy.deepcopy(_one("StatefulSet"))
    probe["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = ["http"]
    assert _schema_problems(probe, "1.37.0")
    monitor = copy.deepcopy(_one("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    monitor["spec"]["endpoint"] = monitor["spec"].pop("endpoints")
    problems = _schema_problems(monitor, "1.37.0")
    assert any("endpoint" in p and "unexpected" in p for p in problems) and any("required" in p for p in problems)


def test_services_select_the_gpu_pods_and_name_their_ports() -> None:
    statefulset = _one("StatefulSet")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert _labels_match(statefulset["spec"]["selector"]["matchLabels"], pod_labels)
    port_names = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    headless = _one("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None", "a StatefulSet's serviceName must be a headless Service"
    for service in (d for _, d in _docs() if d["kind"] == "Service"):
        assert _labels_match(service["spec"]["selector"], pod_labels), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, port


def test_servicemonitor_scrapes_each_pod_once() -> None:
    monitor = _one("ServiceMonitor")
    selected = [d for _, d in _docs() if d["kind"] == "Service"
                and _labels_match(monitor["spec"]["selector"]["matchLabels"], d["metadata"].get("labels", {}))]
    assert [s["metadata"]["name"] for s in selected] == ["stylecast"]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}


def test_gpu_probes_and_security(tmp_path: Path) -> None:
    statefulset = _one("StatefulSet")
    container = _container()
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 == resources["requests"]["nvidia.com/gpu"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    pod = statefulset["spec"]["template"]["spec"]
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert pod["securityContext"]["runAsNonRoot"] is True
    context = pod["securityContext"]
    assert f"USER {context['runAsUser']}:{context['runAsGroup']}" in dockerfile, "pod uid/gid and image user differ"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    drain = load_settings(_config_file(tmp_path), env=_env()).service.drain_timeout_s
    assert pod["terminationGracePeriodSeconds"] > drain + 10, "Kubernetes would kill the pod before it drains"


def _config_file(tmp: Path) -> Path:
    """The ConfigMap's stylecast.yaml, written where load_settings can read it."""
    configmap = _one("ConfigMap", "stylecast-config")
    path = tmp / "stylecast.yaml"
    path.write_text(configmap["data"]["stylecast.yaml"])
    return path


def _env() -> dict[str, str]:
    """The container's STYLECAST_* environment as the pod would see it (secrets and paths stood in for)."""
    env = {}
    for item in _container()["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = "secret-from-kubernetes-0123456789"
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = "stylecast-0"
    env["STYLECAST_MODEL__PROFILE"] = "synthetic-full"  # the real path exists only on the cluster's volume
    return env


def test_configmap_and_environment_make_valid_settings(tmp_path: Path) -> None:
    settings = load_settings(_config_file(tmp_path), env=_env())
    assert settings.service.api_host == "0.0.0.0" and settings.service.token is not None
    assert settings.model.device == "cuda"
    assert {p["containerPort"] for p in _container()["ports"]} == {settings.service.api_port}
    # A misspelt section (STYLECAST_SERVICES__TOKEN) would be ignored by the loader, not refused: catch it here.
    sections = set(Settings.model_fields)
    for item in _container()["env"]:
        name = item["name"]
        first = name.removeprefix("STYLECAST_").split("__")[0].lower()
        assert first in sections or name in (POD_NAME_ENV, REPLICAS_ENV), f"{name} is neither a setting nor a sharding variable"


def test_config_file_is_mounted_where_the_command_reads_it() -> None:
    container, pod = _container(), _one("StatefulSet")["spec"]["template"]["spec"]
    config_path = container["args"][container["args"].index("--config") + 1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {t["metadata"]["name"] for t in _one("StatefulSet")["spec"]["volumeClaimTemplates"]}
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes or mount["name"] in claims, mount
    [mount] = [m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")]
    configmap = _one("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    assert config_path[len(mount["mountPath"]) + 1:] in configmap["data"]


def test_shared_memory_and_runtime_dir_volumes(tmp_path: Path) -> None:
    container, pod = _container(), _one("StatefulSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory"
    limit = int(shm["sizeLimit"].removesuffix("Gi")) * 2**30
    settings = load_settings(_config_file(tmp_path), env=_env())
    assert limit >= 8 * stream_shm_bytes(settings), "room for at least 8 streams at the configured size"
    # ensure_private_dir refuses a world-writable runtime dir: an emptyDir is one, so the service gets a subfolder.
    runtime = settings.service.runtime_dir
    assert str(runtime.parent) in mounts and str(runtime) not in mounts


def test_sharding_environment() -> None:
    statefulset = _one("StatefulSet")
    env = {item["name"]: item for item in _container()["env"]}
    assert env["STYLECAST_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert int(env["STYLECAST_REPLICAS"]["value"]) == statefulset["spec"]["replicas"], "STYLECAST_REPLICAS must equal spec.replicas"
    last = statefulset["spec"]["replicas"] - 1  # the highest pod of the set
    shard = shard_from_env({"STYLECAST_POD_NAME": f"{statefulset['metadata']['name']}-{last}", "STYLECAST_REPLICAS": env["STYLECAST_REPLICAS"]["value"]})
    assert (shard.ordinal, shard.replicas) == (last, statefulset["spec"]["replicas"])


def test_objects_referenced_but_not_shipped_are_documented() -> None:
    pod = _one("StatefulSet")["spec"]["template"]["spec"]
    referenced = {("ConfigMap", v["configMap"]["name"]) for v in pod["volumes"] if "configMap" in v}
    referenced |= {("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) for v in pod["volumes"] if "persistentVolumeClaim" in v}
    referenced |= {("Secret", e["valueFrom"]["secretKeyRef"]["name"]) for e in _container()["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    shipped = {(d["kind"], d["metadata"]["name"]) for _, d in _docs()}
    assert referenced - shipped == EXTERNAL_OBJECTS
    readme = (REPO / "deploy" / "README.md").read_text()
    for _, name in EXTERNAL_OBJECTS:
        assert name in readme, f"deploy/README.md must say how to create {name}"


def test_compile_cache_is_mounted_where_the_image_puts_it() -> None:
    from tests.test_deploy_compose import image_env

    cache = image_env()["TORCHINDUCTOR_CACHE_DIR"]
    container, pod = _container(), _one("StatefulSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    holders = [m for m in container["volumeMounts"] if cache.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(holders) == 1 and not holders[0].get("readOnly"), holders
    assert "emptyDir" in volumes[holders[0]["name"]] or "persistentVolumeClaim" in volumes[holders[0]["name"]]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]  # writable by the service's user
