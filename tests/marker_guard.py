"""The markers a test must carry for what it starts, and the run order they give.

`ray`: the test uses a Ray fixture (the single-node Serve application or the multi-node cluster).
`trained`: the test needs the trained registry (full training on the real data), or trains
models of its own (required for the former, carried by choice for the latter).
`cluster`: the test uses the multi-node cluster (it stops the single-node application first).

`pytest -m "not ray and not trained"` selects the tests that start no Ray and train nothing; the
conftest hooks fail a test that would start Ray or train without the marker saying so.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable

import pytest

# The fixtures that start Ray or train the models, by the marker their users must carry. Fixtures
# built on them (lab, secured, prometheus, ...) are covered through the test's fixture closure.
REQUIRED: dict[str, frozenset[str]] = {
    "ray": frozenset({"serve_app", "cluster"}),
    "trained": frozenset({"trained_registry"}),
    "cluster": frozenset({"cluster"}),
}


def missing_markers(fixturenames: Iterable[str], markers: Iterable[str]) -> list[str]:
    """The markers a test using `fixturenames` (its whole fixture closure) needs but lacks."""
    used, have = set(fixturenames), set(markers)
    return sorted(marker for marker, fixtures in REQUIRED.items() if used & fixtures and marker not in have)


def run_group(markers: Iterable[str]) -> int:
    """The test's place in the run: tests with neither Ray nor trained models (0), those needing the
    trained registry alone (1), single-node Ray (2), the multi-node cluster last (3)."""
    have = set(markers)
    if "cluster" in have:
        return 3
    if "ray" in have:
        return 2
    return 1 if "trained" in have else 0


def marker_names(item: pytest.Item) -> set[str]:
    return {mark.name for mark in item.iter_markers()}


def missing_message(nodeid: str, missing: Iterable[str], why: str) -> str:
    marks = ", ".join(f"@pytest.mark.{name}" for name in missing)
    return f"{nodeid} {why} but is not marked {marks} (add it to the test or to the module's pytestmark)"


_current: list[pytest.Item | None] = [None]  # the test being set up, run or torn down


def set_current(item: pytest.Item | None) -> None:
    _current[0] = item


def require_marker(marker: str, why: str) -> None:
    """Called where Ray starts or the models train: fails the current test unless it carries `marker`.
    The fixture-closure check at setup catches the usual case first; this one also catches a fixture
    reached through `request.getfixturevalue` or a cluster a test starts on its own."""
    item = _current[0]
    if item is not None and marker not in marker_names(item):
        pytest.fail(missing_message(item.nodeid, [marker], why), pytrace=False)


def ray_initialized() -> bool:
    """Whether this process has called ray.init, looked up only if Ray is already imported (a Ray-free
    run stays free of it)."""
    ray = sys.modules.get("ray")
    is_initialized = getattr(ray, "is_initialized", None)
    return bool(is_initialized and is_initialized())
