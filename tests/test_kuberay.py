"""The KubeRay manifests, checked offline: regenerated from the project's files, valid against the
real RayService and RayCluster CRDs (fields the schema does not define are rejected), their
serveConfigV2 valid for Serve, and the container image consistent with the pins."""
from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERAY = ROOT / "cluster" / "kuberay"


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
            assert {"secretRef": {"name": "kepler-registry-s3"}} in container["envFrom"]
            assert {"secretRef": {"name": "kepler-api-keys"}} in container["envFrom"]  # hashes, from a Secret
    text = "".join((KUBERAY / f).read_text() for f in ("rayservice.yaml", "raycluster.yaml", "network.yaml"))
    assert not re.search(r"(?i)(aws_secret_access_key|password|BEGIN [A-Z ]*PRIVATE KEY)\s*[:=]", text)


def test_network_exposes_only_the_serve_port_over_tls():
    documents = list(yaml.safe_load_all((KUBERAY / "network.yaml").read_text()))
    kinds = {d["kind"]: d for d in documents}
    ingress = kinds["Ingress"]
    assert ingress["spec"]["tls"] and all(
        p["backend"]["service"]["port"]["number"] == 8000 for r in ingress["spec"]["rules"] for p in r["http"]["paths"])
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    exposed = {p["port"] for d in policies for rule in d["spec"]["ingress"] for p in rule.get("ports", [])}
    assert exposed <= {8000, 8265}
    dashboard_rules = [rule for d in policies for rule in d["spec"]["ingress"]
                       if any(p["port"] == 8265 for p in rule.get("ports", []))]
    assert all("kuberay" in str(rule["from"]) for rule in dashboard_rules)  # the operator only


def test_dockerfile_matches_the_pins():
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    ray_version = re.search(r"^ray==([\d.]+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    assert base == f"rayproject/ray:{ray_version}-py311-cpu"
    assert manifest("rayservice.yaml")["spec"]["rayClusterConfig"]["rayVersion"] == ray_version
    assert "pip install --no-cache-dir -c constraints.txt ." in dockerfile  # CI's pins, CI's installer
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
