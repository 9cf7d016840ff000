"""platform/kubernetes/: every manifest is valid against the Kubernetes API schemas (offline, with
kubernetes-validate, strict: an unknown or misspelt field fails), and the manifests fit together and fit
the application: the gateway's probes hit its real `/readyz` and `/healthz`, every container has resource
requests and limits, each worker the CLI knows has a Deployment running it, the ConfigMap and Secret name
only settings the application reads, the Service, Ingress, PodDisruptionBudget and autoscaler select the
gateway pods, and the autoscaler's request-rate metric is the one the Prometheus adapter rule derives from
the gateway's real request counter."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from gateway.api.routes import health
from gateway.core import metrics
from gateway.workers import WORKERS
from tests.conftest import need
from tests.platform_configs.common import PLATFORM, parse_command, setting_names

KUBE = PLATFORM / "kubernetes"
# The oldest Kubernetes release these manifests are written for (autoscaling/v2, policy/v1, preStop exec),
# and the newest whose schemas the validator ships.
OLDEST = "1.29.0"


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(KUBE.glob("*.yaml")):
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return out


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in by_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _validator() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        need("kubernetes-validate is not installed: `pip install -e '.[dev]'` (make install) installs it")
    return kubernetes_validate


@pytest.mark.parametrize("version", ["oldest", "newest"])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    kv = _validator()
    release = OLDEST if version == "oldest" else kv.latest_version()
    docs = documents()
    assert len(docs) >= 12
    errors = []
    for name, doc in docs:
        try:
            kv.validate(doc, release, strict=True)
        except Exception as exc:  # ValidationError, SchemaNotFoundError, InvalidSchemaError...
            errors.append(f"{name} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    assert not errors, "\n".join(errors)


def test_the_validator_refuses_a_misspelt_field() -> None:
    kv = _validator()
    doc = one("Deployment", "flashgate-gateway")
    broken = {**doc, "spec": {**doc["spec"], "replica": 3}}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, OLDEST, strict=True)


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]


def _routes() -> set[str]:
    return {getattr(r, "path", "") for r in health.router.routes}


def test_gateway_probes_hit_the_real_health_routes_and_it_serves_on_every_address() -> None:
    gateway = one("Deployment", "flashgate-gateway")
    (container,) = _pod(gateway)["spec"]["containers"]
    ns = parse_command(container["command"])
    assert (ns.command, ns.host) == ("serve", "0.0.0.0")
    assert container["ports"][0]["containerPort"] == ns.port
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (ready["path"], live["path"]) == ("/readyz", "/healthz")
    assert {"/readyz", "/healthz"} <= _routes()
    assert gateway["spec"]["replicas"] >= 2
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_every_container_has_requests_and_limits_and_reads_the_shared_settings() -> None:
    config = {d["metadata"]["name"] for d in by_kind("ConfigMap")}
    secrets = {d["metadata"]["name"] for d in by_kind("Secret")}
    deployments = by_kind("Deployment")
    for deployment in deployments:
        for container in _pod(deployment)["spec"]["containers"]:
            where = f"{deployment['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert {"cpu", "memory"} <= set(resources.get("limits", {})), where
            sources = container["envFrom"]
            assert {s["configMapRef"]["name"] for s in sources if "configMapRef" in s} <= config, where
            assert {s["secretRef"]["name"] for s in sources if "secretRef" in s} <= secrets, where
            assert any("configMapRef" in s for s in sources) and any("secretRef" in s for s in sources), where


def test_each_worker_the_cli_knows_has_a_deployment() -> None:
    running: dict[str, int] = {}
    for deployment in by_kind("Deployment"):
        ns = parse_command(_pod(deployment)["spec"]["containers"][0]["command"])
        if ns.command == "worker":
            running[ns.name] = deployment["spec"]["replicas"]
    assert set(running) == set(WORKERS)
    assert running["admission"] >= 2  # a stand-by takes the lease over when the leader dies


def test_config_map_and_secret_name_only_settings_the_application_reads() -> None:
    known = setting_names()
    config = one("ConfigMap", "flashgate-config")["data"]
    secret = one("Secret", "flashgate-secrets")["stringData"]
    assert not (set(config) | set(secret)) - known, sorted((set(config) | set(secret)) - known)
    assert not set(config) & set(secret)
    assert config["FLASHGATE_ENVIRONMENT"] == "production"
    assert config["FLASHGATE_TRUSTED_PROXIES"]  # the ingress controller's X-Forwarded-For is believed
    assert "FLASHGATE_SECRET_KEY" in secret and "FLASHGATE_SECRET_KEY" not in config


def test_service_ingress_and_disruption_budget_select_the_gateway_pods() -> None:
    labels = _pod(one("Deployment", "flashgate-gateway"))["metadata"]["labels"]
    service = one("Service", "flashgate-gateway")
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for ingress in by_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == "flashgate-gateway" and backend["port"]["name"] in port_names
    pdb = one("PodDisruptionBudget", "flashgate-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    admission = [d for d in by_kind("Deployment") if d["spec"]["template"]["spec"]["containers"][0]["command"][-1]
                 == "admission"][0]
    pdb = one("PodDisruptionBudget", "flashgate-worker-admission")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= _pod(admission)["metadata"]["labels"].items()


def test_autoscaler_scales_the_gateway_on_the_request_rate_the_adapter_derives() -> None:
    hpa = one("HorizontalPodAutoscaler", "flashgate-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": "flashgate-gateway"}
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"  # the fallback without the adapter
    metric = kinds["Pods"]["pods"]["metric"]["name"]

    rules = yaml.safe_load(one("ConfigMap", "flashgate-prometheus-adapter-rules")["data"]["config.yaml"])["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == metric]
    series = re.fullmatch(r"\^?(\w+)\$?", rule["name"]["matches"]).group(1)
    assert rule["seriesQuery"].startswith(series + "{")
    assert "rate(<<.Series>>" in rule["metricsQuery"]
    assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])
    # The series is the `_count` of the gateway's request histogram: one per request answered.
    assert series == metrics.REQUEST_SECONDS._name + "_count"
    assert metrics.REQUEST_SECONDS._type == "histogram"
