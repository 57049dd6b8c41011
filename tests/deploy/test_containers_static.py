"""The Dockerfile and docker-compose.yml checked without a container runtime: hadolint, Compose
v2's own `config` (the real parser, types and interpolation), the compose-spec schema, and what
the files must say (stages, user, healthchecks, two schedulers, conditions, volumes, loopback
ports, no secrets). Seconds; part of `make test`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import (
    CHECK_JSONSCHEMA,
    HADOLINT,
    ROOT,
    run,
    uvx_tool_ready,
)

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
LOCAL = ROOT / "deploy" / "compose" / "local.yml"
ENV_EXAMPLE = ROOT / ".env.example"
CORRAL_SERVICES = {"gateway", "scheduler", "scheduler-standby", "session-store", "model-manager"}
SECRETS = ("RABBITMQ_PASSWORD", "MONGO_PASSWORD", "CORRAL_ADMIN_KEY", "GRAFANA_ADMIN_PASSWORD")


def local_env(path: Path) -> Path:
    """An env file for the local override: .env.example's values and a port per LOCAL_* name."""
    names = re.findall(r"\b(LOCAL_[A-Z_]+)\b", LOCAL.read_text())
    ports = {name: str(20000 + i) for i, name in enumerate(sorted(set(names)))}
    path.write_text(
        ENV_EXAMPLE.read_text() + "".join(f"{name}={port}\n" for name, port in ports.items())
    )
    return path


def compose_config(compose: Path, env_file: Path, *files: Path) -> dict[str, Any]:
    argv = [str(compose), "--env-file", str(env_file)]
    for file in files or (COMPOSE,):
        argv += ["-f", str(file)]
    done = run([*argv, "config", "--format", "json"], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


def stages(dockerfile: str) -> dict[str, str]:
    """Each stage's name and its text (the lines from its FROM to the next)."""
    found: dict[str, str] = {}
    for block in re.split(r"(?m)^(?=FROM )", dockerfile)[1:]:
        name = re.match(r"FROM \S+(?: AS (\S+))?", block)
        assert name is not None
        found[name.group(1) or f"stage{len(found)}"] = block
    return found


def test_dockerfiles_lint_clean() -> None:
    hadolint = uvx_tool_ready(HADOLINT, "hadolint")
    for file in (DOCKERFILE, ROOT / "deploy" / "compose" / "rabbitmq.Containerfile"):
        done = run([*hadolint, str(file)], cwd=ROOT)
        assert done.returncode == 0, f"{file.name}:\n{done.stdout}{done.stderr}"


def test_one_multi_stage_dockerfile_runs_every_service_unprivileged() -> None:
    text = DOCKERFILE.read_text()
    parts = stages(text)
    assert list(parts)[-1] == "runtime", "the services' image is the default (last) target"
    build = ("deps", "standins-deps", "services-venv", "standins-venv")
    assert {*build, "runtime-base", "standins", "runtime"} == set(parts)
    # Installed from the wheelhouse alone; the dependencies with the lock's hashes.
    for stage in build:
        assert "--no-index" in parts[stage], stage
    assert "--require-hashes" in parts["deps"] and "--require-hashes" in parts["standins-deps"]
    # The final images take only the virtual environment from the build stages: no pip, no
    # wheels, no compiler, no uv.
    for final in ("runtime-base", "standins", "runtime"):
        body = parts[final]
        assert not re.search(r"\b(pip install|apt-get|uv |gcc|/wheels)\b", body), final
    assert "pip uninstall --yes --quiet pip setuptools" in parts["services-venv"]
    user = re.search(r"(?m)^USER (\d+):(\d+)$", parts["runtime-base"])
    assert user is not None and int(user.group(1)) != 0 and int(user.group(2)) != 0
    assert re.search(r'(?m)^HEALTHCHECK .*CMD \["corral-ready"\]$', parts["runtime"])
    assert 'ENTRYPOINT ["corral"]' in parts["runtime-base"]
    entrypoint = (ROOT / "deploy" / "image" / "corral").read_text()
    for service in ("gateway", "scheduler", "session-store", "model-manager"):
        assert service in entrypoint
    # The context is the wheelhouse and the two scripts, nothing else of the checkout.
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert [line for line in ignore if line and not line.startswith("#")] == [
        "*",
        "!dist/image/deps/",
        "!dist/image/corral/",
        "!deploy/image/",
    ]


def test_compose_file_passes_compose_v2_and_the_compose_spec_schema(
    compose_binary: Path, tmp_path: Path
) -> None:
    done = run(
        [str(compose_binary), "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    env = local_env(tmp_path / "local.env")
    both = ["-f", str(COMPOSE), "-f", str(LOCAL)]
    done = run([str(compose_binary), "--env-file", str(env), *both, "config", "-q"], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    schema = uvx_tool_ready(CHECK_JSONSCHEMA, "check-jsonschema")
    done = run([*schema, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_runs_the_whole_cluster_with_an_active_and_a_standby_scheduler(
    compose_binary: Path,
) -> None:
    config = compose_config(compose_binary, ENV_EXAMPLE)
    services = config["services"]
    assert set(services) == CORRAL_SERVICES | {
        "rabbitmq",
        "mongo",
        "ollama",
        "prometheus",
        "grafana",
        "otel-collector",
    }
    env = {name: services[name]["environment"] for name in CORRAL_SERVICES}
    assert {name: env[name]["CORRAL_SERVICE"] for name in CORRAL_SERVICES} == {
        "gateway": "gateway",
        "scheduler": "scheduler",
        "scheduler-standby": "scheduler",
        "session-store": "session-store",
        "model-manager": "model-manager",
    }
    assert len({env[name]["CORRAL_INSTANCE_ID"] for name in CORRAL_SERVICES}) == len(
        CORRAL_SERVICES
    )
    assert env["gateway"]["CORRAL_EXPECTED_SCHEDULERS"] == "2"
    assert env["gateway"]["CORRAL_AUTH"] == "on"
    assert len({services[name]["image"] for name in CORRAL_SERVICES}) == 1, "one image"
    for name in CORRAL_SERVICES:
        assert services[name]["healthcheck"]["test"] == ["CMD", "corral-ready"], name
        assert services[name]["read_only"] is True, name
        assert env[name]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    for name in ("rabbitmq", "mongo", "ollama", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"], name

    def condition(service: str, on: str) -> str:
        return str(services[service]["depends_on"][on]["condition"])

    assert condition("gateway", "rabbitmq") == "service_healthy"
    assert condition("session-store", "mongo") == "service_healthy"
    assert condition("scheduler", "rabbitmq") == "service_healthy"
    assert condition("scheduler-standby", "rabbitmq") == "service_healthy"
    assert condition("model-manager", "ollama") == "service_healthy"
    assert condition("grafana", "prometheus") == "service_healthy"

    # RabbitMQ with its management UI and Prometheus plugin.
    plugins = (ROOT / "deploy" / "compose" / "rabbitmq" / "enabled_plugins").read_text()
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins
    assert "management" in services["rabbitmq"]["image"]
    assert services["mongo"]["image"].startswith("docker.io/library/mongo:")

    def mounts(service: str) -> dict[str, str]:
        return {v["target"]: v["source"] for v in services[service].get("volumes", [])}

    assert set(config["volumes"]) == {
        "rabbitmq-data",
        "mongo-data",
        "ollama-models",
        "prometheus-data",
        "grafana-data",
    }
    assert mounts("ollama")["/root/.ollama"] == "ollama-models"
    assert mounts("prometheus")["/etc/prometheus"] == str(ROOT / "deploy" / "prometheus")
    assert mounts("grafana")["/etc/grafana/provisioning"] == str(
        ROOT / "deploy" / "grafana" / "provisioning"
    )
    assert mounts("grafana")["/var/lib/grafana/dashboards/corral"] == str(
        ROOT / "deploy" / "grafana" / "dashboards"
    )
    assert mounts("otel-collector")["/etc/otelcol-contrib/config.yaml"] == str(
        ROOT / "deploy" / "otel" / "collector.yaml"
    )
    for service in services.values():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), volume["source"]
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", port


def test_no_secret_is_written_in_the_compose_file(compose_binary: Path, tmp_path: Path) -> None:
    text = COMPOSE.read_text()
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name in SECRETS:
        assert name in example, f".env.example lacks {name}"
        assert example[name].startswith("change-me"), name
        assert f"${{{name}:?" in text, f"{name} must be required, with no default"
        assert example[name] not in text
    # Without an env file, Compose refuses to start rather than run with empty credentials.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = run(
        [str(compose_binary), "--env-file", str(empty), "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0
    assert "set in .env" in done.stderr


def test_the_collector_pipeline_names_what_it_defines() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "otel" / "collector.yaml").read_text())
    http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert http.endswith(":4318")
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline[kind]) <= set(config[kind]), kind


def test_scripts_are_executable() -> None:
    for path in (
        ROOT / "deploy" / "compose" / "build-images.sh",
        ROOT / "deploy" / "image" / "corral",
        ROOT / "deploy" / "image" / "corral-ready",
    ):
        assert path.stat().st_mode & 0o111, path
