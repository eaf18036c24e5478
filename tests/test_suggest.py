"""KOI name suggestions as one types (Catalogue.suggest and GET /api/v1/kois): every accepted
name form partly typed, Kepler names, limits and odd input, on a small catalogue built here."""
from __future__ import annotations

import asyncio
import json
import math
from urllib.parse import urlencode

import pandas as pd
import pytest
from fastapi import FastAPI

from runtimes.catalogue import Catalogue
from runtimes.schema import WITH_DIAGNOSTICS
from serve_app.http import catalogue as catalogue_routes
from serve_app.http import errors

# (kepoi_name, kepid, kepler_name, disposition), in name order as a catalogue must be.
ROWS = [
    ("K00001.01", 11446443, "Kepler-1 b", "CONFIRMED"),
    ("K00070.01", 6850504, "Kepler-20 c", "CONFIRMED"),
    ("K00070.02", 6850504, "Kepler-20 b", "CONFIRMED"),
    ("K00075.01", 7199397, None, "CANDIDATE"),
    ("K00087.01", 10593626, "Kepler-22 b", "CONFIRMED"),
    ("K00750.01", 10795103, None, "FALSE_POSITIVE"),
    ("K00752.01", 10797460, "Kepler-227 b", "CONFIRMED"),
    ("K00752.02", 10797460, None, "FALSE_POSITIVE"),
    ("K00754.01", 10854555, None, "FALSE_POSITIVE"),
    ("K01781.01", 11551692, "Kepler-410 A b", "CONFIRMED"),
    ("K02029.01", 11455428, "Kepler-220 b", "CONFIRMED"),
    ("K07016.01", 8311864, "Kepler-452 b", "CONFIRMED"),
]


def small_catalogue() -> Catalogue:
    table = pd.DataFrame({
        "kepoi_name": [r[0] for r in ROWS], "kepid": [r[1] for r in ROWS],
        "kepler_name": [r[2] if r[2] else math.nan for r in ROWS],
        "disposition_2025_09_18": [r[3] for r in ROWS],
        **{name: [float(i) for i in range(len(ROWS))] for name in WITH_DIAGNOSTICS},
    })
    return Catalogue(table, "1.0.0")


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return small_catalogue()


def kois(found: list[dict]) -> list[str]:
    return [match["koi"] for match in found]


@pytest.mark.parametrize("prefix", ["752", "K752", "k752", "KOI-752", "koi-752", "KOI 752", "koi752", " K00752 ",
                                    "K00752", "00752", "752.", "K00752.", "752.0", "KOI-752.0"])
def test_a_koi_number_in_any_form_gives_its_kois(catalogue, prefix):
    assert kois(catalogue.suggest(prefix)) == ["K00752.01", "K00752.02"]


@pytest.mark.parametrize("prefix", ["752.01", "K00752.01", "koi-752.01", "KOI 00752.01"])
def test_a_whole_koi_name_gives_that_koi(catalogue, prefix):
    assert catalogue.suggest(prefix) == [{"koi": "K00752.01", "kepler_name": "Kepler-227 b",
                                          "disposition": "CONFIRMED"}]


def test_a_number_means_that_koi_and_leading_zeros_a_prefix_of_the_canonical_name(catalogue):
    assert kois(catalogue.suggest("75")) == ["K00075.01"]
    assert kois(catalogue.suggest("K0075")) == ["K00750.01", "K00752.01", "K00752.02", "K00754.01"]
    assert kois(catalogue.suggest("K007")) == kois(catalogue.suggest("K0075"))
    assert kois(catalogue.suggest("K0007")) == kois(catalogue.suggest("koi 0007")) == ["K00070.01", "K00070.02",
                                                                                       "K00075.01"]
    assert kois(catalogue.suggest("1781")) == ["K01781.01"]
    assert kois(catalogue.suggest("7016.01")) == ["K07016.01"]


def test_each_match_names_the_koi_its_kepler_name_and_disposition(catalogue):
    assert catalogue.suggest("K0075", limit=2) == [
        {"koi": "K00750.01", "kepler_name": None, "disposition": "FALSE_POSITIVE"},
        {"koi": "K00752.01", "kepler_name": "Kepler-227 b", "disposition": "CONFIRMED"}]


def test_kepler_names_case_insensitively_the_exact_number_first(catalogue):
    names = lambda prefix: [m["kepler_name"] for m in catalogue.suggest(prefix)]  # noqa: E731
    assert names("kepler-22") == ["Kepler-22 b", "Kepler-220 b", "Kepler-227 b"]
    assert names("KEPLER-22") == names("Kepler 22") == names("kepler22") == names("kepler-22")
    assert names("kepler-22 b") == names("Kepler-22b") == names("kepler 22 B") == ["Kepler-22 b"]
    assert names("kepler-2") == ["Kepler-20 b", "Kepler-20 c", "Kepler-22 b", "Kepler-220 b", "Kepler-227 b"]
    assert names("kepler-410") == names("kepler-410 a") == names("Kepler-410 A b") == ["Kepler-410 A b"]
    assert names("Kepler-410ab") == ["Kepler-410 A b"]
    assert names("kepler-410 b") == [] and names("kepler-4") == ["Kepler-410 A b", "Kepler-452 b"]
    assert names("kepler-1") == ["Kepler-1 b"]


def test_a_partly_typed_word_gives_the_first_names(catalogue):
    every_kepler = ["Kepler-1 b", "Kepler-20 b", "Kepler-20 c", "Kepler-22 b", "Kepler-220 b", "Kepler-227 b",
                    "Kepler-410 A b", "Kepler-452 b"]
    for prefix in ("kep", "Kepler", "kepler-", "KEPLER "):
        assert [m["kepler_name"] for m in catalogue.suggest(prefix, limit=50)] == every_kepler
    for prefix in ("k", "K", "koi", "KOI-"):
        assert kois(catalogue.suggest(prefix, limit=3)) == ["K00001.01", "K00070.01", "K00070.02"]
    assert len(catalogue.suggest("k", limit=50)) == len(ROWS)  # KOIs first, no KOI twice


def test_at_most_limit(catalogue):
    assert kois(catalogue.suggest("K", limit=1)) == ["K00001.01"]
    assert len(catalogue.suggest("K")) == 10
    assert len(catalogue.suggest("K", limit=1000)) == len(ROWS)
    for limit in (0, -1, True, 2.5, "3", None):
        assert catalogue.suggest("K", limit=limit) == []


@pytest.mark.parametrize("prefix", ["", "   ", "\t\n", "x", "kx", "K-752", "752.012", "123456", "K123456",
                                    "10797460", "KIC 10797460", "<img src=x onerror=alert(1)>",
                                    "<script>alert(1)</script>", "'; drop table kois; --", "kepler-22 b c d",
                                    "kepler--22", "752" * 30, "K" * 10_000, "\u212a752", "\uff17\uff15\uff12",
                                    "752\x00", "kepler-\u0662\u0662", "%", ".*", "K00752.01 OR 1=1"])
def test_odd_input_gives_no_match_and_never_raises(catalogue, prefix):
    assert catalogue.suggest(prefix) == []


@pytest.mark.parametrize("prefix", [None, 752, 7.52, b"752", ["752"], {"koi": "752"}])
def test_a_prefix_that_is_not_text_gives_no_match(catalogue, prefix):
    assert catalogue.suggest(prefix) == []


def test_the_sorted_keys_are_built_once(catalogue):
    catalogue.suggest("kepler")
    index = catalogue.__dict__["_suggest_index"]
    catalogue.suggest("kepler-2")
    catalogue.suggest("752")
    assert catalogue.__dict__["_suggest_index"] is index
    assert index[0] == sorted(index[0])


# ---- the route ----------------------------------------------------------------------------
class FakeKOIs:
    def __init__(self, catalogue: Catalogue):
        self._catalogue = catalogue

    async def catalogue(self) -> Catalogue:
        return self._catalogue


class FakeIngress:
    def __init__(self, catalogue: Catalogue):
        self.kois = FakeKOIs(catalogue)


def get(app: FastAPI, path: str, query: dict) -> tuple[int, dict]:
    """One GET through the ASGI app: (status, JSON body)."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "http_version": "1.1", "method": "GET", "path": path, "raw_path": path.encode(),
             "root_path": "", "scheme": "http", "query_string": urlencode(query).encode(), "headers": [],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    status = next(m for m in sent if m["type"] == "http.response.start")["status"]
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


@pytest.fixture(scope="module")
def app(catalogue) -> FastAPI:
    app = FastAPI()
    app.state.ingress = FakeIngress(catalogue)
    app.include_router(catalogue_routes.router)
    errors.install(app)
    return app


def test_the_route_answers_the_catalogue_version_and_the_matches(app, catalogue):
    status, body = get(app, "/api/v1/kois", {"prefix": "kepler-22", "limit": 2})
    assert status == 200
    assert body == {"catalogue_version": "1.0.0", "matches": catalogue.suggest("kepler-22", 2)}
    assert [m["kepler_name"] for m in body["matches"]] == ["Kepler-22 b", "Kepler-220 b"]
    status, body = get(app, "/api/v1/kois", {"prefix": "752"})
    assert status == 200 and kois(body["matches"]) == ["K00752.01", "K00752.02"]


@pytest.mark.parametrize("query", [{}, {"prefix": ""}, {"prefix": "<img src=x onerror=alert(1)>"},
                                   {"prefix": "x" * 64}, {"prefix": "K", "limit": 50}])
def test_the_route_takes_odd_prefixes_without_failing(app, query):
    status, body = get(app, "/api/v1/kois", query)
    assert status == 200 and body["catalogue_version"] == "1.0.0"
    assert len(body["matches"]) == (len(ROWS) if query.get("limit") == 50 else 0)


@pytest.mark.parametrize("query", [{"prefix": "K", "limit": 0}, {"prefix": "K", "limit": 51},
                                   {"prefix": "K", "limit": "ten"}, {"prefix": "K" * 65}])
def test_the_route_refuses_a_limit_or_prefix_out_of_bounds(app, query):
    status, body = get(app, "/api/v1/kois", query)
    assert status == 422 and isinstance(body["error"], str)
