"""The private Ray and scikit-learn behaviour the project relies on (serve_app/ray_internals.py,
runtimes/sklearn_internals.py), checked without a Ray cluster: after an upgrade, a failure here
names the internal that changed. Each test exercises one wrapped function against the real
library, simulating only what a Serve replica would provide."""
from __future__ import annotations

import asyncio
import contextvars
import types

import numpy as np
import pytest

from runtimes.sklearn_internals import TreeState, fitted_forest, fitted_tree, tree_state
from runtimes.tree_arrays import PackedForest
from serve_app.ray_internals import current_request_id, multiplexed_model_ids, zero_counter

# The node record layout stored in every random_forest model.npz: a change means stored
# versions no longer load (`Tree.__setstate__` checks the layout).
NODE_FIELDS = [("left_child", "<i8"), ("right_child", "<i8"), ("feature", "<i8"), ("threshold", "<f8"),
               ("impurity", "<f8"), ("n_node_samples", "<i8"), ("weighted_n_node_samples", "<f8"),
               ("missing_go_to_left", "|u1")]
NODE_BYTES = 64


# --- Ray Serve ---------------------------------------------------------------------------------

def test_current_request_id_reads_the_id_a_replica_sets():
    from ray.serve import context

    assert current_request_id() == ""  # outside a request
    assert context._get_serve_request_context().request_id == ""

    def in_request() -> str:  # what a replica does before calling the deployment's method
        context._serve_request_context.set(context._RequestContext(request_id="req-1"))
        return current_request_id()

    assert contextvars.copy_context().run(in_request) == "req-1"
    assert current_request_id() == ""  # the id stays with the request's context


@pytest.fixture
def fake_replica(monkeypatch):
    """What `@serve.multiplexed` asks of a running replica: its context and the controller's client."""
    import ray.serve.multiplex as multiplex

    pushed: list = []
    replica = types.SimpleNamespace(app_name="app", deployment="models", replica_id="replica-1")
    monkeypatch.setattr(multiplex, "_get_internal_replica_context", lambda: replica)
    monkeypatch.setattr(multiplex, "_get_global_client",
                        lambda *args, **kwargs: types.SimpleNamespace(record_request_routing_info=pushed.append))
    return pushed


def test_multiplexed_model_ids_lists_the_lru_cache(fake_replica):
    from ray import serve

    async def load(model_id: str) -> str:  # a plain function, as ModelServer decorates
        return f"model {model_id}"

    class Server:
        @serve.multiplexed(max_num_models_per_replica=2)
        async def get_model(self, model_id: str) -> str:
            return f"method {model_id}"

    async def scenario() -> None:
        get_model = serve.multiplexed(max_num_models_per_replica=2)(load)
        assert multiplexed_model_ids(get_model) == set()  # no cache before the first call
        assert await get_model("1.0.0") == "model 1.0.0"
        assert await get_model("1.1.0") == "model 1.1.0"
        assert multiplexed_model_ids(get_model) == {"1.0.0", "1.1.0"}
        await get_model("1.0.0")  # most recently used: 1.1.0 goes next
        await get_model("1.2.0")
        assert multiplexed_model_ids(get_model) == {"1.0.0", "1.2.0"}

        server = Server()
        assert await server.get_model("2.0.0") == "method 2.0.0"
        assert multiplexed_model_ids(server.get_model) == {"2.0.0"}

    asyncio.run(scenario())


def test_zero_counter_records_a_zero_through_the_counter(monkeypatch):
    from ray.serve.metrics import Counter

    counter = Counter("upstream_internals_probe_total", "a probe", tag_keys=("model",))
    with pytest.raises(ValueError):
        counter.inc(0, tags={"model": "m"})  # the reason for the private call
    recorded: list = []
    monkeypatch.setattr(counter, "_metric", types.SimpleNamespace(
        record=lambda value, tags: recorded.append((value, tags))))
    zero_counter(counter, {"model": "m"})
    assert recorded == [(0.0, {"model": "m"})]
    with pytest.raises(ValueError, match="model"):
        zero_counter(counter, {})  # tags are still checked


# --- scikit-learn --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def forest_data():
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values, so splits learn a direction for them
    forest = RandomForestClassifier(n_estimators=5, max_depth=6, random_state=0, n_jobs=1).fit(X, y)
    probe = rng.normal(size=(50, 5))
    probe[rng.random(probe.shape) < 0.2] = np.nan
    return forest, probe


def test_tree_state_has_the_stored_layout(forest_data):
    forest, _ = forest_data
    for estimator in forest.estimators_:
        state = tree_state(estimator)
        assert [(name, state.nodes.dtype.fields[name][0].str) for name in state.nodes.dtype.names] == NODE_FIELDS
        assert state.nodes.dtype.itemsize == NODE_BYTES
        assert state.nodes.shape == (estimator.tree_.node_count,)
        assert state.values.dtype == np.float64 and state.values.shape == (len(state.nodes), 1, 3)
        assert isinstance(state.max_depth, int) and state.max_depth == estimator.tree_.max_depth


def test_fitted_tree_answers_as_the_tree_it_was_taken_from(forest_data):
    forest, probe = forest_data
    for estimator in forest.estimators_:
        state = tree_state(estimator)
        stored = TreeState(state.nodes.copy(), state.values.copy(), state.max_depth)  # as read from a file
        rebuilt = fitted_tree(stored, 5, forest.classes_)
        assert np.array_equal(rebuilt.predict_proba(probe), estimator.predict_proba(probe))
    other_layout = np.zeros(len(state.nodes), dtype=[(name, kind) for name, kind in NODE_FIELDS[:-1]])
    with pytest.raises(ValueError):
        fitted_tree(TreeState(other_layout, state.values, state.max_depth), 5, forest.classes_)


def test_fitted_forest_answers_as_the_forest_it_was_taken_from(forest_data):
    forest, probe = forest_data
    trees = [fitted_tree(tree_state(estimator), 5, forest.classes_) for estimator in forest.estimators_]
    assert fitted_forest(trees, n_jobs=2).n_jobs == 2
    rebuilt = fitted_forest(trees)  # one thread: threads add the trees up in no fixed order
    assert np.array_equal(rebuilt.predict_proba(probe), forest.predict_proba(probe))
    assert np.array_equal(rebuilt.predict(probe), forest.predict(probe))


def test_tree_arrays_have_the_shapes_the_packed_forest_assumes(forest_data):
    """Public attributes, but runtimes/tree_arrays.py assumes their exact form."""
    forest, probe = forest_data
    for estimator in forest.estimators_:
        tree = estimator.tree_
        n = tree.node_count
        for name in ("children_left", "children_right", "feature"):
            assert getattr(tree, name).dtype == np.intp and getattr(tree, name).shape == (n,)
        assert tree.threshold.dtype == np.float64 and tree.threshold.shape == (n,)
        assert tree.missing_go_to_left.shape == (n,) and set(np.unique(tree.missing_go_to_left)) <= {0, 1}
        leaves = tree.children_left < 0
        assert np.array_equal(leaves, tree.children_right < 0) and set(tree.children_left[leaves]) == {-1}
        assert tree.value.shape == (n, 1, 3) and np.allclose(tree.value.sum(axis=2), 1.0)  # class fractions
    packed = PackedForest([estimator.tree_ for estimator in forest.estimators_])
    assert np.array_equal(packed.predict_proba(probe), forest.predict_proba(probe))
