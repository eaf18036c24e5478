"""The marker guard: a test that starts Ray or needs the trained registry must carry `ray` or
`trained`, and the run order is Ray-free tests, trained-only, single-node Ray, then the cluster,
random within each group. Checked on the pure functions and on a small pytest run of fake fixtures
wired with the project's own conftest hooks (nothing here starts Ray or trains)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .marker_guard import missing_markers, run_group

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("fixtures, markers, missing", [
    ({"tmp_path", "moto_server", "any_store"}, set(), []),
    ({"trained_registry", "publisher_keys"}, set(), ["trained"]),
    ({"trained_registry"}, {"trained"}, []),
    ({"lab", "serve_app", "trained_registry"}, set(), ["ray", "trained"]),  # through a fixture's fixture
    ({"lab", "serve_app", "trained_registry"}, {"ray"}, ["trained"]),
    ({"serve_app", "trained_registry"}, {"ray", "trained"}, []),
    ({"cluster", "trained_registry"}, {"ray", "trained"}, ["cluster"]),
    ({"cluster", "trained_registry"}, {"cluster", "ray", "trained"}, []),
    ({"jwt_issuer", "publisher_keys"}, {"parametrize"}, []),
])
def test_missing_markers(fixtures, markers, missing):
    assert missing_markers(fixtures, markers) == missing


def test_run_groups_in_order():
    order = [set(), {"trained"}, {"ray", "trained"}, {"cluster", "ray", "trained"}]
    assert [run_group(m) for m in order] == [0, 1, 2, 3]
    assert run_group({"parametrize"}) == 0 and run_group({"ray"}) == 2


CONFTEST = """
import sys
from pathlib import Path

import pytest

from tests import marker_guard
from tests.conftest import (pytest_collection_modifyitems, pytest_runtest_logfinish, pytest_runtest_setup,
                            pytest_runtest_teardown, pytest_sessionstart)

STARTED = Path(__file__).parent / "started.log"


def _start(request, what):
    marker_guard.require_marker("ray" if what != "trained_registry" else "trained", "starts " + what)
    with STARTED.open("a") as log:
        log.write(f"{what} {request.node.name}\\n")


@pytest.fixture
def trained_registry(request):
    _start(request, "trained_registry")


@pytest.fixture
def serve_app(request, trained_registry):
    _start(request, "serve_app")


@pytest.fixture
def cluster(request, trained_registry):
    _start(request, "cluster")


@pytest.fixture
def lab(serve_app):
    pass


class FakeRay:
    initialized = False

    def is_initialized(self):
        return self.initialized


@pytest.fixture
def fake_ray(monkeypatch):
    ray = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    return ray
"""

TESTS = """
import pytest

def test_free_a(): pass
def test_free_b(): pass
def test_free_c(): pass
def test_free_d(): pass

@pytest.mark.trained
def test_trained_a(trained_registry): pass
@pytest.mark.trained
def test_trained_b(trained_registry): pass
@pytest.mark.trained
def test_trained_c(trained_registry): pass

@pytest.mark.ray
@pytest.mark.trained
def test_ray_a(serve_app): pass
@pytest.mark.ray
@pytest.mark.trained
def test_ray_b(lab): pass
@pytest.mark.ray
@pytest.mark.trained
def test_ray_c(serve_app): pass

@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.trained
def test_cluster_a(cluster): pass
@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.trained
def test_cluster_b(cluster): pass
"""

MISMARKED = """
import pytest

def test_bad_serve_app(serve_app): pass
def test_bad_lab(lab): pass
@pytest.mark.ray
def test_bad_trained(lab): pass
@pytest.mark.ray
@pytest.mark.trained
def test_bad_cluster(cluster): pass
def test_bad_dynamic(request): request.getfixturevalue("serve_app")
def test_bad_ray_init(fake_ray): fake_ray.initialized = True
@pytest.mark.ray
def test_good_ray_init(fake_ray): fake_ray.initialized = True
"""


def _pytest(directory: Path, *args: str) -> subprocess.CompletedProcess:
    """pytest in `directory`, with no plugin but those named in `args` (a faster start)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    ray\n    trained\n    cluster\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    return tmp_path


def test_a_mismarked_test_fails_before_its_fixtures_start(project):
    (project / "test_mismarked.py").write_text(MISMARKED)
    result = _pytest(project, "-q", "-rA")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr

    def outcomes(name: str) -> set[str]:
        return set(re.findall(rf"^(PASSED|FAILED|ERROR) test_mismarked.py::{name}\b", out, re.M))

    assert outcomes("test_bad_serve_app") == {"ERROR"}  # at setup: the test never ran
    assert "test_bad_serve_app uses fixtures that need them but is not marked @pytest.mark.ray, " \
           "@pytest.mark.trained" in out
    assert outcomes("test_bad_lab") == {"ERROR"}
    assert outcomes("test_bad_trained") == {"ERROR"}
    assert "test_bad_trained uses fixtures that need them but is not marked @pytest.mark.trained " in out
    assert outcomes("test_bad_cluster") == {"ERROR"} and "not marked @pytest.mark.cluster " in out
    assert outcomes("test_bad_dynamic") == {"FAILED"}
    assert "test_bad_dynamic starts trained_registry but is not marked @pytest.mark.trained" in out
    assert "ERROR" in outcomes("test_bad_ray_init") and "test_bad_ray_init initialized Ray but is not marked" in out
    assert outcomes("test_good_ray_init") == {"PASSED"}
    started = (project / "started.log").read_text() if (project / "started.log").exists() else ""
    assert started == "", started  # nothing was started for any of them


def test_groups_in_order_random_within_each(project):
    (project / "test_order.py").write_text(TESTS)
    group = {"free": 0, "trained": 1, "ray": 2, "cluster": 3}
    orders = []
    for seed in (1, 2, 3):
        result = _pytest(project, "-q", "-rA", "-p", "pytest_randomly", f"--randomly-seed={seed}")
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith(f"Using --randomly-seed={seed}\n"), result.stdout  # shown with -q too
        ran = re.findall(r"^PASSED test_order.py::(test_(\w+)_[abcd])$", result.stdout, re.M)  # in the order run
        assert len(ran) == 12, result.stdout
        assert [group[g] for _, g in ran] == sorted(group[g] for _, g in ran), ran
        orders.append(tuple(name for name, _ in ran))
    assert len(set(orders)) > 1  # the seed does change the order within the groups
    started = {line.split()[1] for line in (project / "started.log").read_text().splitlines()}
    assert started == {name for name in orders[0] if not name.startswith("test_free")}  # marked ones do start
