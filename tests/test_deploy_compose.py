"""Compose deployment (deploy/compose.yaml), its Prometheus/Grafana/mediamtx files and the container
image definition, checked statically (no Docker engine runs in CI).

The compose file is validated against the Compose Specification's JSON schema, which the
`check-jsonschema` wheel vendors (check_jsonschema/builtin_schemas/vendor/compose-spec.json), with
`jsonschema`: no network. The Dockerfile is parsed here: instructions, users, COPY sources and the
build context's ignore file.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement

try:
    import check_jsonschema  # noqa: F401  (only its vendored compose-spec.json is used)
    import jsonschema
except ImportError as exc:  # a clear failure, not a skip: these checks must run in CI
    raise ImportError(f"{exc.name} is missing: pip install -e '.[dev]'") from exc

from shared.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
TOKEN = "compose-token-0123456789"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_schema() -> dict:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(vendored.read_text(encoding="utf-8"))


def _compose_problems(document: dict) -> list[str]:
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(document)]


def _binds(service: dict) -> dict[str, str]:
    """Bind mounts of a compose service: container path -> host path (relative to deploy/)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            found[target] = source
    return found


# --------------------------------------------------------------------------------------------------
# Compose file
# --------------------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec() -> None:
    problems = _compose_problems(_compose())
    assert not problems, "\n".join(problems)


def test_compose_schema_check_catches_mistakes() -> None:
    broken = copy.deepcopy(_compose())
    broken["services"]["stylecast"]["volume"] = broken["services"]["stylecast"].pop("volumes")
    broken["services"]["grafana"]["ports"] = "3000:3000"
    problems = _compose_problems(broken)
    assert any("'volume' was unexpected" in p for p in problems) and any(p.startswith("services.grafana.ports") for p in problems)


def test_every_file_the_compose_file_names_exists() -> None:
    compose = _compose()
    build = compose["services"]["stylecast"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == REPO and (context / build["dockerfile"]).is_file()
    for name, service in compose["services"].items():
        for target, source in _binds(service).items():
            assert (DEPLOY / source).exists(), f"{name}: {source} (mounted at {target}) does not exist"
        for dependency in service.get("depends_on", []):
            assert dependency in compose["services"], (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: named volume {source} is not declared"


def test_stylecast_service_has_gpu_shm_and_secrets_from_the_environment() -> None:
    service = _compose()["services"]["stylecast"]
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert int(service["shm_size"].removesuffix("gb")) >= 1, "docker's default 64 MiB /dev/shm holds no stream at size 512"
    assert re.fullmatch(r"\$\{STYLECAST_TOKEN:\?.+\}", service["environment"]["STYLECAST_SERVICE__TOKEN"]), "the token must come from the environment, never the file"
    for name, service_ in _compose()["services"].items():
        for port in service_.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_config_and_environment_make_valid_settings(tmp_path: Path) -> None:
    service = _compose()["services"]["stylecast"]
    config_in_container = service["command"][service["command"].index("--config") + 1]
    host_config = DEPLOY / _binds(service)[config_in_container]
    env = {name: (TOKEN if "TOKEN" in name else "synthetic-full") for name in service["environment"]}
    sections = set(Settings.model_fields)
    for name in env:  # a misspelt section would be ignored by the loader, not refused
        assert name.removeprefix("STYLECAST_").split("__")[0].lower() in sections, name
    settings = load_settings(host_config, env=env)
    assert settings.service.api_host == "0.0.0.0" and settings.service.token.get_secret_value() == TOKEN
    published = {int(p.rsplit(":", 1)[1]) for p in service["ports"]}
    assert settings.service.api_port in published


def test_prometheus_scrapes_the_stylecast_service(tmp_path: Path) -> None:
    compose = _compose()
    binds = _binds(compose["services"]["prometheus"])
    config = yaml.safe_load((DEPLOY / binds["/etc/prometheus/prometheus.yml"]).read_text())
    [job] = config["scrape_configs"]
    [target] = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    api = compose["services"]["stylecast"]
    settings = load_settings(DEPLOY / _binds(api)["/etc/stylecast/stylecast.yaml"], env={"STYLECAST_SERVICE__TOKEN": TOKEN})
    assert host in compose["services"] and host == "stylecast"
    assert int(port) == settings.service.api_port and job["metrics_path"] == "/metrics"


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    compose = _compose()
    binds = _binds(compose["services"]["grafana"])
    provisioning = DEPLOY / binds["/etc/grafana/provisioning"]
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and url.hostname in compose["services"] and url.port == 9090
    [provider] = yaml.safe_load((provisioning / "dashboards" / "stylecast.yaml").read_text())["providers"]
    dashboards_dir = provider["options"]["path"]
    assert dashboards_dir in binds, "the provider's path is not where the dashboards are mounted"
    dashboards = list((DEPLOY / binds[dashboards_dir]).glob("*.json"))
    assert [d.name for d in dashboards] == ["stylecast.json"]
    dashboard = json.loads(dashboards[0].read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]} | {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/stylecast.json"


def test_mediamtx_serves_rtsp_and_hls_on_the_published_ports() -> None:
    service = _compose()["services"]["mediamtx"]
    config = yaml.safe_load((DEPLOY / _binds(service)["/mediamtx.yml"]).read_text())
    published = {int(p.rsplit(":", 1)[1]) for p in service["ports"]}
    assert config["rtsp"] is True and config["hls"] is True
    assert {int(config["rtspAddress"].lstrip(":")), int(config["hlsAddress"].lstrip(":"))} <= published
    assert "all_others" in config["paths"]


# --------------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def _one_instruction(keyword: str) -> str:
    values = [rest for k, rest in _instructions() if k == keyword]
    assert len(values) == 1, (keyword, values)
    return values[0]


def test_image_base_user_healthcheck_and_entrypoint() -> None:
    args = {k: v for k, v in (rest.split("=", 1) for key, rest in _instructions() if key == "ARG" and "=" in rest)}
    base = _one_instruction("FROM")
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"nvidia/cuda:[0-9.]+-runtime-ubuntu[0-9.]+", image), image
    # torch's CUDA build and the base image's CUDA must be the same major.minor (cu128 <-> 12.8.x).
    flavor = re.fullmatch(r"cu([0-9]+)([0-9])", args["TORCH_FLAVOR"])
    assert flavor and image.split(":")[1].startswith(f"{flavor.group(1)}.{flavor.group(2)}."), (args["TORCH_FLAVOR"], image)
    user = _one_instruction("USER")
    assert user.split(":")[0] not in ("0", "root") and user.split(":")[0].isdigit()
    healthcheck = _one_instruction("HEALTHCHECK")
    assert "/healthz" in healthcheck and "--timeout=" in healthcheck
    assert json.loads(_one_instruction("ENTRYPOINT")) == ["stylecast", "serve"]
    assert json.loads(_one_instruction("CMD"))[0] == "--config"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "stylecast" in scripts
    settings = load_settings(DEPLOY / "docker" / "stylecast.yaml", env={"STYLECAST_SERVICE__TOKEN": TOKEN})
    assert _one_instruction("EXPOSE") == str(settings.service.api_port)
    assert str(settings.service.runtime_dir.parent) in " ".join(rest for k, rest in _instructions() if k == "RUN")


def test_torch_pin_of_the_image_satisfies_the_project() -> None:
    args = dict(rest.split("=", 1) for key, rest in _instructions() if key == "ARG" and "=" in rest)
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [torch] = [Requirement(d) for d in dependencies if Requirement(d).name == "torch"]
    assert torch.specifier.contains(args["TORCH_VERSION"]), (args["TORCH_VERSION"], str(torch.specifier))


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for our ignore file: the last matching pattern wins; '!' re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern == "*" or path == pattern or path.startswith(pattern + "/"):
            ignored = not negate
    return ignored


def test_every_copy_source_exists_and_reaches_the_build() -> None:
    patterns = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#") and "**" not in line]
    copies = [shlex.split(rest) for key, rest in _instructions() if key == "COPY"]
    assert copies
    for parts in copies:
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not _ignored(source, patterns), f"COPY {source}: excluded by deploy/Dockerfile.dockerignore"
    assert _ignored("tests/test_api.py", patterns) and _ignored(".git/config", patterns)


@pytest.mark.parametrize("name", ["README.md", "CONFIGURATION.md"])
def test_deploy_documents_exist(name: str) -> None:
    assert (DEPLOY / name).is_file() and (DEPLOY / name).stat().st_size > 0


def image_env() -> dict[str, str]:
    """The Dockerfile's ENV assignments (KEY=VALUE form)."""
    found = {}
    for keyword, rest in _instructions():
        if keyword == "ENV":
            found.update(pair.split("=", 1) for pair in rest.split() if "=" in pair)
    return found


def test_compile_cache_lives_on_a_named_volume() -> None:
    """torch.compile's kernels must outlive the container (minutes per batch shape to rebuild on an H100)."""
    cache = image_env()["TORCHINDUCTOR_CACHE_DIR"]
    assert cache.startswith("/var/cache/stylecast/")
    assert f"{cache} " in next(rest for k, rest in _instructions() if k == "RUN" and "install -d" in rest) + " "
    volumes = _compose()["services"]["stylecast"]["volumes"]
    named = {v.split(":")[1]: v.split(":")[0] for v in volumes if not v.startswith((".", "/"))}
    holder = [target for target in named if cache.startswith(target.rstrip("/") + "/")]
    assert holder, f"no named volume holds {cache}"
    assert named[holder[0]] in _compose()["volumes"]
