"""The Kubernetes manifests in deploy/: rendered the way `kubectl apply -k` renders them (a small
renderer of plain `resources` lists; it refuses any kustomize feature it does not implement),
each object validated offline against the Kubernetes OpenAPI schemas (kubernetes-validate), and
the pieces checked against each other and against the gateway's configuration.
"""

import shutil
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE = REPO_ROOT / "deploy" / "kubernetes"
REDIS_EXAMPLE = REPO_ROOT / "deploy" / "redis-example"
SERVICE = "dds.gateway.v1.EngineVersionService"

# Kinds that live outside namespaces (kustomize leaves their namespace alone).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}
# The oldest Kubernetes the manifests target (native gRPC probes are GA from 1.27) and the newest
# schemas the validator ships.
VERSIONS = ["1.27", kubernetes_validate.utils.latest_version()]


def render(directory: Path) -> list:
    """The objects `kubectl kustomize directory` outputs, for the features used here."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "namespace", "resources"}
    assert not unsupported, f"{directory}: the test's renderer does not implement {unsupported}"
    assert kustomization["kind"] == "Kustomization"
    objects = []
    for entry in kustomization["resources"]:
        path = (directory / entry).resolve()
        if path.is_dir():
            objects += render(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    namespace = kustomization.get("namespace")
    for obj in objects:
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
        elif namespace and obj["kind"] == "Namespace":
            obj["metadata"]["name"] = namespace
    return objects


def one(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def base():
    return render(BASE)


@pytest.fixture(scope="module")
def gateway_toml(base):
    return tomllib.loads(one(base, "ConfigMap", "dds-gateway-config")["data"]["gateway.toml"])


@pytest.fixture(scope="module")
def pod(base):
    return one(base, "Deployment", "dds-gateway")["spec"]["template"]


@pytest.mark.parametrize("directory", [BASE, REDIS_EXAMPLE], ids=["base", "redis-example"])
@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(directory, version):
    objects = render(directory)
    assert objects
    for obj in objects:
        # strict: a misspelt or misplaced field is an error, not silently dropped.
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_renderer_agrees_with_kubectl_where_it_is_installed():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (CI validates with the renderer alone)")
    for directory in [BASE, REDIS_EXAMPLE]:
        out = subprocess.run(
            [kubectl, "kustomize", str(directory)], check=True, capture_output=True, text=True
        ).stdout
        theirs = [doc for doc in yaml.safe_load_all(out) if doc]
        key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
        assert sorted(map(key, theirs)) == sorted(map(key, render(directory)))
        for mine in render(directory):
            assert mine == next(o for o in theirs if key(o) == key(mine))


def test_the_base_has_every_piece(base):
    kinds = sorted(o["kind"] for o in base)
    assert kinds == sorted(
        ["Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service",
         "PodDisruptionBudget", "NetworkPolicy"]
    )
    # No Secret is applied: the callers' Secret holds the operator's own token hashes.
    assert all(o["kind"] != "Secret" for o in base)


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
    assert container["ports"][0]["containerPort"] == port
    readiness = container["readinessProbe"]["grpc"]
    assert readiness == {"port": port, "service": SERVICE}
    liveness = container["livenessProbe"]["grpc"]
    assert liveness["port"] == port and liveness.get("service", "") == ""


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
    assert volumes["config"]["configMap"]["name"] == "dds-gateway-config"
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
    env = {e["name"]: e for e in container["env"]}
    secret = env["DDS_GATEWAY_STATE_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert secret["optional"] is True
    redis = render(REDIS_EXAMPLE)
    service = one(redis, "Service", "dds-gateway-redis")
    assert service["spec"]["ports"][0]["port"] == 6379
    assert service["metadata"]["namespace"] == one(base, "Namespace")["metadata"]["name"]


def test_credentials_are_rrsa_only(base, pod, gateway_toml):
    assert gateway_toml["credentials"]["provider"] == "oidc_role_arn"
    account = one(base, "ServiceAccount", "dds-gateway")
    assert pod["spec"]["serviceAccountName"] == "dds-gateway"
    assert account["metadata"]["annotations"]["pod-identity.alibabacloud.com/role-name"]
    namespace = one(base, "Namespace")
    assert namespace["metadata"]["labels"]["pod-identity.alibabacloud.com/injection"] == "on"
    (container,) = pod["spec"]["containers"]
    names = {e["name"] for e in container.get("env", [])}
    assert not any(n.startswith("ALIBABA_CLOUD_ACCESS_KEY") for n in names), "no AccessKey"


def test_network_policy_admits_callers_and_lets_out_only_dns_redis_and_https(base, pod):
    policy = one(base, "NetworkPolicy", "dds-gateway")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [50051]
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (443, "TCP")}


def test_service_is_headless_for_client_side_balancing(base, pod):
    service = one(base, "Service", "dds-gateway")["spec"]
    assert service["clusterIP"] == "None"
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["ports"][0]["targetPort"] == "grpc"
