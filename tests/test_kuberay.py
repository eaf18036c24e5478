"""The KubeRay manifests, checked offline: regenerated from the project's files, valid against the
real RayService and RayCluster CRDs (fields the schema does not define are rejected), their
serveConfigV2 valid for Serve, the container image consistent with the pins, and least privilege:
non-root read-only pods, minimal RBAC, S3 through a narrow IAM policy, egress named port by port,
a private Redis, no secret in any file. No cluster runs here: these check the manifests' shape."""
from __future__ import annotations

import copy
import fnmatch
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERAY = ROOT / "cluster" / "kuberay"
CLUSTERS = ("rayservice.yaml", "raycluster.yaml")
RAY_LABELS = {"app.kubernetes.io/part-of": "kepler-serve", "app.kubernetes.io/component": "ray"}


def crd_schema(file_name: str) -> dict:
    crd = yaml.load((KUBERAY / "crds" / file_name).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


def strict(schema):
    """OpenAPI v3 as JSON Schema, with unknown fields refused wherever the CRD lists its fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: strict(v) for k, v in schema.items()}
    if schema.pop("x-kubernetes-int-or-string", False):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = schema.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in schema and "additionalProperties" not in schema and not preserve:
        schema["additionalProperties"] = False
    return schema


def manifest(file_name: str) -> dict:
    return yaml.safe_load((KUBERAY / file_name).read_text())


def documents(file_name: str) -> list[dict]:
    return list(yaml.safe_load_all((KUBERAY / file_name).read_text()))


def all_documents() -> list[dict]:
    """Every Kubernetes object in cluster/kuberay (cluster.yaml and overlay.yaml are inputs)."""
    return [d for f in sorted(KUBERAY.glob("*.yaml")) for d in documents(f.name) if d and "kind" in d]


def cluster(file_name: str) -> dict:
    spec = manifest(file_name)["spec"]
    return spec.get("rayClusterConfig", spec)


def ray_groups() -> list[tuple[str, dict]]:
    """(file:group, group spec) of every head and worker group of both manifests."""
    groups = []
    for file_name in CLUSTERS:
        spec = cluster(file_name)
        groups.append((f"{file_name}:head", spec["headGroupSpec"]))
        groups += [(f"{file_name}:{g['groupName']}", g) for g in spec["workerGroupSpecs"]]
    return groups


def pod_specs() -> list[tuple[str, dict]]:
    """(name, pod spec) of every pod the manifests define: the Ray groups and the Deployments."""
    pods = [(name, group["template"]["spec"]) for name, group in ray_groups()]
    return pods + [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in all_documents()
                   if d["kind"] == "Deployment"]


def env_value(container: dict, name: str):
    return next((e.get("value", e.get("valueFrom")) for e in container.get("env", []) if e["name"] == name), None)


def policies() -> list[dict]:
    return [d for f in ("network.yaml", "redis.yaml") for d in documents(f) if d["kind"] == "NetworkPolicy"]


def selects(policy: dict, labels: dict) -> bool:
    return policy["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()


def test_manifests_are_generated_from_the_project_files():
    result = subprocess.run([sys.executable, str(KUBERAY / "generate.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("file_name, crd", [("rayservice.yaml", "ray.io_rayservices.yaml"),
                                            ("raycluster.yaml", "ray.io_rayclusters.yaml")])
def test_manifest_is_valid_against_its_crd(file_name, crd):
    schema = crd_schema(crd)
    validator = jsonschema.validators.validator_for(schema)(schema)  # the CRD's own schema is trusted
    document = manifest(file_name)
    validator.validate(document)
    broken = copy.deepcopy(document)  # the strict schema does refuse a field it does not define
    spec = broken["spec"].get("rayClusterConfig", broken["spec"])
    spec["headGroupSpec"]["rayStartParams"] = {**spec["headGroupSpec"]["rayStartParams"]}
    spec["workerGroupSpecs"][0]["maxReplica"] = 10
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        validator.validate(broken)


def test_serve_config_v2_is_a_valid_serve_deploy_config():
    from ray.serve.schema import ServeDeploySchema

    from serve_app.config import AppArgs, BatchSettings, RouterSettings

    config = yaml.safe_load(manifest("rayservice.yaml")["spec"]["serveConfigV2"])
    ServeDeploySchema(**config)
    app = config["applications"][0]
    args = AppArgs(**app["args"])
    assert args.registry.uri.startswith("s3://") and args.registry.verify_key
    assert args.registry.require_signatures, "a cluster refuses to start without the publisher's key"
    deployments = {d["name"]: d for d in app["deployments"]}
    router = RouterSettings(**deployments["Router"]["user_config"])
    for name in ("keras_cnn", "xgboost", "random_forest"):
        scaling = deployments[name]["autoscaling_config"]
        assert (scaling["min_replicas"], scaling["max_replicas"]) == (3, 10)
        assert deployments[name]["max_replicas_per_node"] == 1
        batch = BatchSettings(**deployments[name].get("user_config") or {})
        assert router.batching.max_rows <= batch.max_batch_size  # the router's calls enter @serve.batch
        assert deployments[name]["max_ongoing_requests"] * router.batching.max_rows >= batch.max_batch_size
        assert deployments[name]["max_queued_requests"] > 0  # overload is a fast 503, not a timeout
    assert router.auth.enabled, "a cluster serves with authentication on"
    assert set(deployments) >= set(args.pool_names())  # every variant deployment is sized


def test_cluster_settings_and_no_credentials_in_manifests():
    for file_name in ("rayservice.yaml", "raycluster.yaml"):
        document = manifest(file_name)
        cluster = document["spec"].get("rayClusterConfig", document["spec"])
        assert cluster["authOptions"] == {"mode": "token"} and cluster["enableInTreeAutoscaling"] is True
        workers = cluster["workerGroupSpecs"][0]
        assert (workers["minReplicas"], workers["maxReplicas"]) == (3, 10)
        for group in [cluster["headGroupSpec"], workers]:
            container = group["template"]["spec"]["containers"][0]
            assert container["resources"]["requests"] and container["resources"]["limits"]
            assert {"secretRef": {"name": "kepler-api-keys"}} in container["envFrom"]  # hashes, from a Secret
        # S3 only where replicas run: static keys optional (IRSA needs none), none on the head.
        worker_container = workers["template"]["spec"]["containers"][0]
        assert {"secretRef": {"name": "kepler-registry-s3", "optional": True}} in worker_container["envFrom"]
        head = cluster["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0"
        assert "kepler-registry-s3" not in str(head["template"]["spec"]["containers"][0]["envFrom"])


def test_network_exposes_only_the_serve_port_over_tls():
    documents = list(yaml.safe_load_all((KUBERAY / "network.yaml").read_text()))
    kinds = {d["kind"]: d for d in documents}
    ingress = kinds["Ingress"]
    assert ingress["spec"]["tls"] and all(
        p["backend"]["service"]["port"]["number"] == 8000 for r in ingress["spec"]["rules"] for p in r["http"]["paths"])
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    exposed = {p["port"] for d in policies for rule in d["spec"].get("ingress", []) for p in rule.get("ports", [])}
    assert exposed <= {8000, 8265}
    dashboard_rules = [rule for d in policies for rule in d["spec"].get("ingress", [])
                       if any(p["port"] == 8265 for p in rule.get("ports", []))]
    assert all("kuberay" in str(rule["from"]) for rule in dashboard_rules)  # the operator only


def test_dockerfile_matches_the_pins():
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    ray_version = re.search(r"^ray==([\d.]+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    assert base == f"rayproject/ray:{ray_version}-py311-cpu"
    assert manifest("rayservice.yaml")["spec"]["rayClusterConfig"]["rayVersion"] == ray_version
    # CI's pins, hashed: every dependency from the lock, then the project alone, built offline.
    assert "pip install --no-cache-dir --require-hashes -r cluster/requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps --no-build-isolation ." in dockerfile
    assert re.search(r"^USER 1000(:100)?$", dockerfile, re.M)  # numeric: runAsNonRoot can verify it
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-c constraints.txt" in ci
    for copied in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", dockerfile, re.M):
        for path in copied.split():
            assert (ROOT / path).exists(), path
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    scripts = re.findall(r'^(\S+) = "', section, re.M)
    assert scripts
    for script in scripts:
        assert script in dockerfile, script  # the image checks its entry points exist


# ---- least privilege ------------------------------------------------------------------------------
def test_every_container_runs_non_root_without_privileges():
    containers = [(name, spec, c) for name, spec in pod_specs()
                  for c in spec.get("initContainers", []) + spec["containers"]]
    # The autoscaler sidecar KubeRay adds to the head takes autoscalerOptions.securityContext.
    containers += [(f"{f}:autoscaler", cluster(f)["headGroupSpec"]["template"]["spec"],
                    {"name": "autoscaler", "securityContext": cluster(f)["autoscalerOptions"]["securityContext"]})
                   for f in CLUSTERS]
    assert len(containers) == 2 * 3 + 1  # head, workers, autoscaler per manifest; Redis
    for name, spec, container in containers:
        pod, own = spec.get("securityContext", {}), container.get("securityContext", {})
        effective = {**pod, **own}
        assert effective.get("runAsNonRoot") is True, name
        assert effective.get("runAsUser", 0) > 0, name
        assert effective.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        assert own.get("allowPrivilegeEscalation") is False, name
        assert own.get("capabilities") == {"drop": ["ALL"]}, name  # nothing added back
        assert own.get("readOnlyRootFilesystem") is True, name
        assert not own.get("privileged"), name
        if not name.startswith("kepler-redis"):  # the Ray image's `ray` user
            assert effective["runAsUser"] == 1000, name


def emptydir_mounts(spec: dict, container: dict) -> dict[str, dict]:
    """Mount path -> emptyDir source of a container's emptyDir mounts."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]]["emptyDir"]
            for m in container.get("volumeMounts", []) if "emptyDir" in volumes[m["name"]]}


def writable(path: str, mounts: dict) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def test_read_only_root_filesystem_has_emptydirs_where_ray_keras_and_the_registry_write():
    app = yaml.safe_load(manifest("rayservice.yaml")["spec"]["serveConfigV2"])["applications"][0]
    cache_dir = app["args"]["registry"]["cache_dir"]
    for name, group in ray_groups():
        spec = group["template"]["spec"]
        container = spec["containers"][0]
        mounts = emptydir_mounts(spec, container)
        assert {"/tmp", "/dev/shm"} <= set(mounts), name  # Ray's session dir; its object store
        assert mounts["/dev/shm"]["medium"] == "Memory" and mounts["/dev/shm"]["sizeLimit"], name
        assert "sizeLimit" not in mounts["/tmp"], name  # spilled objects must not evict the pod
        for variable in ("KERAS_HOME", "KEPLER_HOME", "KEPLER_CACHE_DIR"):
            assert writable(env_value(container, variable), mounts), (name, variable)
        assert writable(cache_dir, mounts) and env_value(container, "KEPLER_CACHE_DIR") == cache_dir, name
        assert env_value(container, "KERAS_HOME") in mounts, name  # its own small emptyDir
    for f in CLUSTERS:  # the autoscaler sidecar writes under /tmp too (KubeRay adds /tmp/ray itself)
        head = cluster(f)["headGroupSpec"]["template"]["spec"]
        autoscaler = {"volumeMounts": cluster(f)["autoscalerOptions"]["volumeMounts"]}
        assert "/tmp" in emptydir_mounts(head, autoscaler)
    redis = next(spec for name, spec in pod_specs() if name == "kepler-redis")
    assert "/data" in emptydir_mounts(redis, redis["containers"][0])


def test_workers_get_no_api_token_and_the_head_only_what_the_autoscaler_needs():
    accounts = {d["metadata"]["name"]: d for d in documents("rbac.yaml") if d["kind"] == "ServiceAccount"}
    for name, group in ray_groups():
        spec = group["template"]["spec"]
        if name.endswith(":head"):
            assert spec["serviceAccountName"] == "kepler-serve-head" and spec["automountServiceAccountToken"]
        else:
            assert spec["automountServiceAccountToken"] is False, name
            assert spec["serviceAccountName"] == "kepler-serve-worker", name
        assert spec["serviceAccountName"] in accounts  # KubeRay refuses a named account that is missing
    assert accounts["kepler-serve-worker"]["automountServiceAccountToken"] is False
    roles = [d for d in all_documents() if d["kind"] in ("Role", "ClusterRole")]
    bindings = [d for d in all_documents() if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert [r["kind"] for r in roles] == ["Role"] and [b["kind"] for b in bindings] == ["RoleBinding"]
    rules = roles[0]["rules"]
    for rule in rules:  # no wildcard anywhere
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
    granted = {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    # What Ray's KubeRay node provider calls: GET/PATCH its RayCluster, GET and list pods.
    assert granted == {("", "pods", "get"), ("", "pods", "list"),
                       ("ray.io", "rayclusters", "get"), ("ray.io", "rayclusters", "patch")}
    binding = bindings[0]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": roles[0]["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kepler-serve-head"}]
    # Named after the RayCluster, so KubeRay does not add its broader default Role beside it.
    cluster_name = manifest("raycluster.yaml")["metadata"]["name"]
    assert roles[0]["metadata"]["name"] == binding["metadata"]["name"] == cluster_name


def test_s3_access_through_workload_identity_and_a_narrow_iam_policy(tmp_path):
    from registry import ModelRegistry
    from registry.stores import LocalStore

    accounts = {d["metadata"]["name"]: d for d in documents("rbac.yaml") if d["kind"] == "ServiceAccount"}
    role_arn = accounts["kepler-serve-worker"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", role_arn)
    assert "annotations" not in accounts["kepler-serve-head"]["metadata"]  # the head reads no S3
    policy = json.loads((KUBERAY / "iam-policy.json").read_text())
    statements = policy["Statement"]
    assert policy["Version"] == "2012-10-17" and all(s["Effect"] == "Allow" for s in statements)
    allowed: dict[str, list[str]] = {}
    for statement in statements:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        resources = [statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"]
        for action in actions:
            assert "*" not in action, action
            allowed.setdefault(action, []).extend(resources)
    assert set(allowed) == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    app = yaml.safe_load(manifest("rayservice.yaml")["spec"]["serveConfigV2"])["applications"][0]
    uri = urlsplit(app["args"]["registry"]["uri"])
    bucket, prefix = uri.netloc, uri.path.strip("/")
    listing = next(s for s in statements if s["Action"] == "s3:ListBucket")
    assert listing["Resource"] == f"arn:aws:s3:::{bucket}" and listing["Condition"]["StringLike"]["s3:prefix"]

    def may(action: str, key: str) -> bool:
        return any(fnmatch.fnmatchcase(f"arn:aws:s3:::{bucket}/{prefix}/{key}", r) for r in allowed[action])

    registry = ModelRegistry(LocalStore(tmp_path / "store"), tmp_path / "cache")
    version_file = f"{registry._version_prefix('xgboost', '1.0.0')}/model.json"
    book = re.search(r'^DOCUMENT = \("(\w+)", "(\w+)"\)', (ROOT / "serve_app" / "controller.py").read_text(), re.M)
    assert may("s3:GetObject", version_file) and may("s3:GetObject", registry._alias_key("xgboost", "stable"))
    assert may("s3:PutObject", ModelRegistry._document_key(*book.groups()))  # the experiment book
    assert may("s3:PutObject", "feedback/2026/01/01/part.json")
    assert may("s3:PutObject", "predictions/2026/01/01/part.npz") and may("s3:DeleteObject", "predictions/2026/01/01/x.npz")
    assert not may("s3:DeleteObject", "feedback/2026/01/01/part.json")  # acknowledged labels are never deleted
    assert may("s3:PutObject", registry._alias_key("xgboost", "stable"))  # promotion moves `stable`
    for key in (version_file, registry._alias_key("xgboost", "latest"), "datasets/koi/v1.0.0/data.csv"):
        assert not may("s3:PutObject", key), key  # published versions stay as signed
    assert not any(r.startswith(f"arn:aws:s3:::{bucket}/*") or r == "*" for r in allowed["s3:GetObject"])


def ports_open(rule: dict) -> set[int]:
    return {port for p in rule.get("ports", []) for port in range(p["port"], p.get("endPort", p["port"]) + 1)}


def test_egress_names_dns_ray_ports_redis_s3_and_the_api_server():
    head_labels = {**RAY_LABELS, "ray.io/node-type": "head"}
    worker_labels = {**RAY_LABELS, "ray.io/node-type": "worker"}
    for name, group in ray_groups():  # the labels the policies select are on the pods
        assert group["template"]["metadata"]["labels"] == RAY_LABELS, name
    egress = [p for p in documents("network.yaml") if "Egress" in p["spec"].get("policyTypes", [])]

    def rules(labels: dict) -> list[dict]:
        return [rule for p in egress if selects(p, labels) for rule in p["spec"]["egress"]]

    for rule in rules(head_labels) + rules(worker_labels):
        assert rule.get("to"), rule  # every rule names its destinations
        for peer in rule["to"]:
            assert peer.get("ipBlock", {}).get("cidr") != "0.0.0.0/0", rule
    for labels in (head_labels, worker_labels):
        dns = [r for r in rules(labels) if "kube-dns" in str(r["to"])]
        assert {(p["port"], p["protocol"]) for r in dns for p in r["ports"]} == {(53, "UDP"), (53, "TCP")}
        ray = [r for r in rules(labels) if r["to"] == [{"podSelector": {"matchLabels": RAY_LABELS}}]]
        assert len(ray) == 1
        pinned = {int(v) for _, g in ray_groups() for k, v in g["rayStartParams"].items() if k.endswith("port")}
        start_params = cluster("raycluster.yaml")["workerGroupSpecs"][0]["rayStartParams"]
        workers = set(range(int(start_params["min-worker-port"]), int(start_params["max-worker-port"]) + 1))
        assert pinned | workers | {6379, 8265, 10001, 8000, 8080} <= ports_open(ray[0])
        redis = [r for r in rules(labels) if r["to"] == [{"podSelector": {"matchLabels":
                                                                        {"app.kubernetes.io/name": "kepler-redis"}}}]]
        assert len(redis) == 1 and ports_open(redis[0]) == {6379}
    for group in ("head", "worker"):  # every Ray port the manifests set is pinned, never random
        params = [g["rayStartParams"] for name, g in ray_groups() if (name.endswith(":head")) == (group == "head")]
        for key in ("node-manager-port", "object-manager-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                    "metrics-export-port", "min-worker-port", "max-worker-port"):
            assert all(key in p for p in params), (group, key)
    ip_rules = lambda labels: [r for r in rules(labels) if any("ipBlock" in peer for peer in r["to"])]
    assert [ports_open(r) for r in ip_rules(worker_labels)] == [{443}, {443}]  # S3; STS for IRSA
    assert [ports_open(r) for r in ip_rules(head_labels)] == [{443, 6443}]  # the API server: the head only


def test_redis_is_private_non_root_and_its_password_comes_from_a_secret():
    objects = {(d["kind"], d["metadata"]["name"]): d for d in documents("redis.yaml")}
    deployment = objects["Deployment", "kepler-redis"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert re.fullmatch(r"redis:7\.0\.\d+", container["image"])  # a pinned release, never `latest`
    argv = container["command"] + container["args"]
    assert argv[argv.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert env_value(container, "REDIS_PASSWORD") == {"secretKeyRef": {"name": "kepler-redis", "key": "password"}}
    assert argv[argv.index("--maxmemory") + 1] == "256mb"
    assert argv[argv.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert pod["spec"]["automountServiceAccountToken"] is False
    service = objects["Service", "kepler-redis"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]
    policy = objects["NetworkPolicy", "kepler-redis"]
    assert selects(policy, pod["metadata"]["labels"]) and set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    [rule] = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": RAY_LABELS}}] and ports_open(rule) == {6379}
    assert policy["spec"]["egress"] == []  # Redis opens no connection
    router = yaml.safe_load(manifest("rayservice.yaml")["spec"]["serveConfigV2"])["applications"][0]["deployments"]
    [cache] = [d["user_config"]["cache"] for d in router if d["name"] == "Router"]
    url = urlsplit(cache["redis_url"])  # the routers' Redis, without a password
    assert (url.scheme, url.hostname, url.port, url.password) == ("redis", "kepler-redis", 6379, None)
    for name, group in ray_groups():  # the Ray pods: the password from the Secret
        ray = group["template"]["spec"]["containers"][0]
        assert env_value(ray, "KEPLER_REDIS_PASSWORD") == {"secretKeyRef": {"name": "kepler-redis", "key": "password"}}


def test_no_password_or_key_literal_in_any_manifest():
    assert not [d for d in all_documents() if d["kind"] == "Secret"]  # created by the operator, never committed
    for name, spec in pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            for variable in container.get("env", []):
                if re.search(r"(?i)password|secret|token|private", variable["name"]):
                    assert "value" not in variable and "secretKeyRef" in variable["valueFrom"], (name, variable)
    for path in sorted(KUBERAY.glob("*.yaml")) + [KUBERAY / "iam-policy.json"]:
        text = re.sub(r"(?m)^\s*#.*$", "", path.read_text())  # the comments show the kubectl commands
        assert not re.search(r"(?i)(aws_secret_access_key|password|requirepass)\s*[:=]\s*[\"']?\w", text), path
        assert not re.search(r"BEGIN [A-Z ]*PRIVATE KEY|AKIA[0-9A-Z]{16}", text), path


def load_lock_script():
    spec = importlib.util.spec_from_file_location("lock_requirements", ROOT / "cluster" / "lock_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_lock_pins_the_runtime_closure_with_hashes(tmp_path):
    # Regenerating needs PyPI (cluster/lock_requirements.py); offline, the lock must pin exactly
    # constraints.txt's versions of what the runtime dependencies pull in, each with hashes.
    lock = load_lock_script()
    assert lock.check() == []
    text = lock.LOCK.read_text()
    entries = lock.locked(text)
    assert entries["ray"][0] == re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert not {"pytest", "schemathesis", "moto", "playwright", "shap"} & set(entries)  # no test extra
    assert all(len(hashes) >= 1 for _, hashes in entries.values())
    # The check does catch a stale pin, an entry without hashes and a missing package.
    lock.LOCK = tmp_path / "requirements.lock"
    stale = re.sub(r"^numpy==\S+", "numpy==0.0.1", text, flags=re.M)
    stale = re.sub(r"^(six==\S+) \\\n(    --hash=\S+ \\\n)*    --hash=\S+\n", r"\1\n", stale, flags=re.M)
    lock.LOCK.write_text(re.sub(r"^pyyaml==.*\n(    --hash.*\n)*", "", stale, flags=re.M | re.I))
    assert set(lock.check()) == {"numpy==0.0.1 in the lock, " + entries["numpy"][0] + " pinned",
                                 "six has no sha256 hash", "pyyaml is missing from the lock"}
