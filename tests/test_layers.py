"""The layering the architecture promises, checked on real processes: the registry imports neither
Ray nor an ML framework, training imports no Ray, and only keras_cnn replicas load TensorFlow."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FRAMEWORKS = ("ray", "tensorflow", "keras", "xgboost", "sklearn")


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_registry_imports_no_ray_and_no_framework():
    loaded = imported_after("import registry, registry.registry, registry.stores, registry.config")
    assert not loaded & set(FRAMEWORKS), loaded & set(FRAMEWORKS)


def test_training_and_runtimes_import_no_ray():
    loaded = imported_after("import training.train, training.registry_cli, runtimes; "
                            "from runtimes import runtime_class; runtime_class('xgboost')")
    assert "ray" not in loaded
    assert "tensorflow" not in loaded  # the XGBoost runtime alone does not pull TensorFlow in


@pytest.mark.ray
@pytest.mark.trained
@pytest.mark.parametrize("deployment, tensorflow", [("Router", False), ("xgboost", False),
                                                    ("random_forest", False), ("keras_cnn", True)])
def test_only_cnn_replicas_load_tensorflow(serve_app, deployment, tensorflow):
    replicas = serve_app.serve_status()["applications"]["kepler"]["deployments"][deployment]["replicas"]
    pids = [r["pid"] for r in replicas if r["state"] == "RUNNING"]
    assert pids
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert ("libtensorflow" in maps) == tensorflow, (deployment, pid)
