"""The Ray Serve internals the serving graph relies on, kept in one place.

Each function wraps one private name, for something Serve's public API does not offer; the
comment in each says what is missing. tests/test_upstream_internals.py checks, without a Ray
cluster, that each still behaves as relied on here, so a Ray upgrade that changes one fails
there rather than quietly in production.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ray.serve import context

if TYPE_CHECKING:
    from ray.util.metrics import Counter

# Where `@serve.multiplexed` keeps its per-replica LRU cache: on the decorated function itself,
# or on the instance for a decorated method. Created on the first call.
_MULTIPLEX_CACHE = "__serve_multiplex_wrapper"


def current_request_id() -> str:
    """The id Serve gave the request being handled: "" outside a request."""
    # Serve assigns each request an id (and answers it as the `x-request-id` header) but has no
    # public getter for it; an incoming request carries no such header when Serve made the id.
    request = getattr(context, "_get_serve_request_context", None)
    return (getattr(request(), "request_id", "") or "") if request is not None else ""


def multiplexed_model_ids(get_model: Callable) -> set[str]:
    """The model ids a `@serve.multiplexed` loader holds in this replica's cache now."""
    # `serve.get_multiplexed_model_id()` names the current request's model only; nothing public
    # lists the models a replica has loaded. Serve stores its cache object (with `models`, an
    # ordered mapping of id -> model) on the instance of a decorated method, or on the plain
    # function that `functools.wraps` records as `__wrapped__`, not on the returned wrapper.
    owner = getattr(get_model, "__self__", None)
    if owner is None:
        owner = getattr(get_model, "__wrapped__", get_model)
    cache = getattr(owner, _MULTIPLEX_CACHE, None)
    return set(getattr(cache, "models", None) or ())


def zero_counter(counter: Counter, tags: dict[str, str]) -> None:
    """Create `counter`'s series for `tags` at zero, so it is scraped before its first event."""
    # `Counter.inc` refuses 0 and there is no public way to declare a series, so dashboards and
    # `rate()` would see nothing until the first event; `_record` is what `inc` calls after that
    # check. It skips Serve's filling of the `route` tag: pass every tag here.
    counter._record(0.0, tags=tags)
