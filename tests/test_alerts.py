"""The Prometheus alerting rules: valid for Prometheus (`promtool check rules`), firing and staying
quiet as their unit tests say (`promtool test rules`), and naming only metrics, labels and
histogram buckets that the application exports, so renaming one fails here. Ray-free: the
exported names are read from serve_app/metrics.py's source, which imports Ray."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "cluster" / "prometheus"
ALERTS = RULES_DIR / "alerts.yaml"
ALERTS_TEST = RULES_DIR / "alerts_test.yaml"
METRICS = ROOT / "serve_app" / "metrics.py"

# Ray's own metrics the rules may use, as the Grafana dashboard names them (none is used yet).
RAY_METRICS = {"ray_serve_deployment_replica_healthy", "ray_serve_http_request_latency_ms_bucket",
               "ray_serve_num_http_error_requests_total"}
# Labels Ray's metrics agent adds to every application metric.
RAY_LABELS = {"application", "deployment", "replica"}
# Ray exports the application's metrics with this prefix; prometheus-client's would keep their names.
PREFIXES = {"ray.serve.metrics": "ray_", "ray.util.metrics": "ray_", "prometheus_client": ""}
KINDS = ("Counter", "Gauge", "Histogram")

PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                "offset", "bool", "inf", "nan", "atan2"}
promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool is not installed (Debian: apt-get install "
                                                             "prometheus)")


def _run_promtool(*args: str) -> None:
    result = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


@needs_promtool
def test_rules_are_valid():
    _run_promtool("check", "rules", str(ALERTS.relative_to(ROOT)))


@needs_promtool
def test_rules_unit_tests_pass():
    _run_promtool("test", "rules", str(ALERTS_TEST.relative_to(ROOT)))


def exported_metrics(source: str) -> dict[str, set[str]]:
    """Exported series name -> its label names, for every metric constructed in `source` from
    Ray's or prometheus-client's Counter, Gauge or Histogram with a literal name."""
    tree = ast.parse(source)
    kinds: dict[str, tuple[str, str]] = {}  # local name -> (kind, prefix)
    modules: dict[str, str] = {}  # local module alias -> prefix
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in PREFIXES:
            for alias in node.names:
                if alias.name in KINDS:
                    kinds[alias.asname or alias.name] = (alias.name, PREFIXES[node.module])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in PREFIXES:
                    modules[alias.asname or alias.name] = PREFIXES[alias.name]
    metrics: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in kinds:
            kind, prefix = kinds[func.id]
        elif isinstance(func, ast.Attribute) and func.attr in KINDS and ast.unparse(func.value) in modules:
            kind, prefix = func.attr, modules[ast.unparse(func.value)]
        else:
            continue
        name = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
        assert isinstance(name, ast.Constant) and isinstance(name.value, str), ast.unparse(node)
        labels_node = next((k.value for k in node.keywords if k.arg in ("tag_keys", "labelnames")),
                           node.args[2] if prefix == "" and len(node.args) > 2 else None)
        labels = set(ast.literal_eval(labels_node)) if labels_node is not None else set()
        base = prefix + name.value
        if kind == "Counter" and prefix == "":  # prometheus-client exposes counters as <name>_total
            base = base.removesuffix("_total") + "_total"
        names = [base + suffix for suffix in ("_bucket", "_sum", "_count")] if kind == "Histogram" else [base]
        for exported in names:
            metrics[exported] = labels | ({"le"} if exported.endswith("_bucket") else set())
    return metrics


def latency_buckets(source: str) -> list[float]:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "LATENCY_BUCKETS" for t in node.targets):
            return [float(b) for b in ast.literal_eval(node.value)]
    raise AssertionError("LATENCY_BUCKETS is not in serve_app/metrics.py")


def _without_strings(expression: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expression)


def metric_names(expression: str) -> set[str]:
    """The series names an expression selects: identifiers that are neither functions, aggregations,
    keywords nor label names (in a selector's braces or a by/without/on/ignoring/group list)."""
    text = _without_strings(expression)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]", word):
            names.add(word)
    return names


def selectors(expression: str) -> list[tuple[str, dict[str, str]]]:
    """Each `name{label op "value", ...}`: the name and its matchers' label names and values."""
    found = []
    for match in re.finditer(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expression):
        matchers = dict(re.findall(r'(\w+)\s*(?:=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', match.group(2)))
        found.append((match.group(1), matchers))
    return found


def grouping_labels(expression: str) -> set[str]:
    labels = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", _without_strings(expression)):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    return labels


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_the_name_parser():
    expression = ('sum by (model, reason) ((increase(ray_rollbacks_total{reason!="none"}[15m]) > 0) or '
                  '(ray_rollbacks_total unless ray_rollbacks_total offset 15m) and on (model) '
                  '(ray_x{reason="none"} offset 15m)) > 0 and kepler:ratio_rate5m > (14.4 * 0.005)')
    assert metric_names(expression) == {"ray_rollbacks_total", "ray_x", "kepler:ratio_rate5m"}
    assert grouping_labels(expression) == {"model", "reason"}
    assert selectors('rate(m_bucket{le="0.5", code=~"5.."}[5m])') == [("m_bucket", {"le": "0.5", "code": "5.."})]
    source = ("from ray.serve.metrics import Counter, Histogram\nimport prometheus_client as pc\n"
              "a = Counter('a_total', 'd', tag_keys=('x',))\nb = Histogram('b_seconds', 'd', boundaries=[1])\n"
              "c = pc.Counter('c', 'd', ['y'])\n")
    assert exported_metrics(source) == {"ray_a_total": {"x"}, "ray_b_seconds_bucket": {"le"}, "ray_b_seconds_sum": set(),
                                        "ray_b_seconds_count": set(), "c_total": {"y"}}


def test_every_metric_the_rules_use_is_exported():
    source = METRICS.read_text()
    exported = exported_metrics(source)
    assert len(exported) >= 5, exported  # the parser still finds the metrics
    rules = _rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    used = set()
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names, rule["expr"]
        unknown = names - set(exported) - recorded - RAY_METRICS
        assert not unknown, (f"{rule.get('alert') or rule.get('record')} uses {sorted(unknown)}, which "
                             f"serve_app/metrics.py does not export (it exports {sorted(exported)})")
        used |= names
    assert recorded <= used, f"recording rules no rule uses: {sorted(recorded - used)}"


def test_every_label_and_bucket_the_rules_use_exists():
    source = METRICS.read_text()
    exported, buckets = exported_metrics(source), latency_buckets(source)
    for rule in _rules():
        expression, name = rule["expr"], rule.get("alert") or rule.get("record")
        labels_of_used = set(RAY_LABELS)
        for metric in metric_names(expression) & set(exported):
            labels_of_used |= exported[metric]
        for metric, matchers in selectors(expression):
            if metric not in exported:
                continue
            unknown = set(matchers) - exported[metric] - RAY_LABELS
            assert not unknown, f"{name}: {metric} has no label {sorted(unknown)} (it has {sorted(exported[metric])})"
            if "le" in matchers:
                assert float(matchers["le"]) in buckets, f"{name}: le={matchers['le']} is not one of {buckets}"
        unknown = grouping_labels(expression) - labels_of_used
        assert not unknown, f"{name} groups by {sorted(unknown)}, a label none of its metrics has"


def test_every_alert_says_how_urgent_it_is_and_what_to_do():
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert len(alerts) >= 8
    tested = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired = {case["alertname"] for test in tested for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tested for case in test.get("alert_rule_test", []) if not case["exp_alerts"]}
    for alert in alerts:
        assert alert["labels"]["severity"] in ("page", "ticket"), alert["alert"]
        assert {"summary", "description", "runbook"} <= set(alert["annotations"]), alert["alert"]
        assert alert["alert"] in fired and alert["alert"] in quiet, f"{alert['alert']} needs a firing and a quiet test"
