"""The web page at /ui in a real headless Chromium (Debian's, driven by Playwright), loaded from the
running application: what a person sees equals what the API answers, hostile names stay text,
the key prompt works with authentication on, and no page logs a console error. Each test saves a
screenshot (KEPLER_UI_SCREENSHOTS names a folder to keep them in; the README shows them)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests

from runtimes.schema import LABELS

from .helpers import until, with_router
from .ray_cluster import ADMIN_KEY, PREDICT_KEY, SERVE_URL

pytestmark = [pytest.mark.ray, pytest.mark.trained]
CHROMIUM = "/usr/bin/chromium"
# This closed network refuses Chromium's background connections; these flags stop it trying.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KOI_PAGE = f"{SERVE_URL}/ui/?koi=K00752.01&version=2.1.0&model=xgboost"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives each launch a fresh, empty profile of its own.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


class Page:
    """A fresh page (own session storage) that keeps the console's errors and saves screenshots."""

    def __init__(self, browser, folder: Path, width: int = 1280, height: int = 800):
        self.context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.folder = folder

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=str(self.folder / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser, tmp_path):
    folder = Path(os.environ.get("KEPLER_UI_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    opened = Page(browser, folder)
    yield opened
    opened.close()


def _api(path: str, body: dict | None = None, headers: dict | None = None) -> dict:
    method = "POST" if body is not None else "GET"
    response = requests.request(method, f"{SERVE_URL}{path}", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _number(text: str) -> float:
    return float(re.search(r"-?\d+(\.\d+)?", text.replace("\u2212", "-")).group())


def test_a_koi_page_shows_the_apis_probabilities_and_top_contributions(serve_app, page):
    page.page.goto(KOI_PAGE)
    chart = page.page.locator('[data-chart="contributions"][data-model="xgboost"]')
    chart.wait_for(timeout=60_000)
    predicted = _api("/api/v1/predict", {"koi": "K00752.01", "model": "xgboost", "version": "2.1.0"})
    for label in LABELS:
        shown = page.page.locator(f'.bar-value[data-model="xgboost"][data-class="{label}"]').first.text_content()
        assert _number(shown) == pytest.approx(round(predicted["probabilities"][label], 3), abs=5e-4), label
    explained = _api("/api/v1/explain", {"koi": "K00752.01", "model": "xgboost", "version": "2.1.0"})
    top = explained["explanations"][0]
    values = top["values"][top["explained_class"]]
    bars = chart.locator("[data-feature]")
    for i in range(5):
        bar = bars.nth(i)
        assert bar.get_attribute("data-feature") == top["feature_names"][i]
        assert bar.locator(".bar-label").text_content().startswith(top["feature_labels"][i])
        assert bar.locator(".bar-value").text_content() == f"{values[i]:.3f}"
    assert "2.1.0" in page.page.locator("#answered-version").text_content()
    assert "CONFIRMED" in page.page.locator("#disposition").text_content()
    assert page.page.locator("#in-training-set").text_content().strip() in {"yes", "no"}
    page.screenshot("koi")
    assert page.errors == []


def test_the_ensemble_view_charts_each_member_beside_its_weight(serve_app, page):
    page.page.goto(f"{SERVE_URL}/ui/?koi=K00752.01&version=2.1.0&model=ensemble")
    members = _api("/api/v1/explain", {"koi": "K00752.01", "model": "ensemble", "version": "2.1.0"})
    for member in members["explanations"][0]["members"]:
        page.page.locator(f'[data-chart="contributions"][data-model="{member}"]').wait_for(timeout=60_000)
    page.screenshot("koi-ensemble")
    assert page.errors == []


def test_the_page_fits_a_phone(serve_app, browser, tmp_path):
    phone = Page(browser, Path(os.environ.get("KEPLER_UI_SCREENSHOTS") or tmp_path), width=375, height=800)
    try:
        phone.page.goto(KOI_PAGE)
        phone.page.locator('[data-chart="contributions"]').first.wait_for(timeout=60_000)
        assert phone.page.evaluate("document.documentElement.scrollWidth") <= 375
        phone.screenshot("koi-phone")
        assert phone.errors == []
    finally:
        phone.close()


def test_suggestions_come_as_you_type_and_an_unknown_koi_is_a_clear_message(serve_app, page):
    page.page.goto(f"{SERVE_URL}/ui/")
    page.page.locator("#koi-input").press_sequentially("K0075", delay=50)
    page.page.locator("datalist option").first.wait_for(state="attached", timeout=15_000)
    options = page.page.eval_on_selector_all("datalist option", "os => os.map(o => o.value)")
    assert "K00752.01" in options and all(o.startswith("K0075") for o in options)
    page.page.locator("#koi-input").fill("K99999.01")
    page.page.locator("#lookup-button").click()
    message = page.page.locator("#message")
    message.filter(has_text="K99999.01").wait_for(timeout=30_000)
    assert "404" in message.text_content()
    page.screenshot("unknown-koi")
    # the 404 itself is logged by Chromium as a failed resource: nothing else may be
    assert all("404" in e for e in page.errors), page.errors


def test_a_name_carrying_markup_is_shown_as_text_and_runs_nothing(serve_app, page):
    hostile = '<img src=x onerror="window.__owned = 1">'
    page.page.goto(f"{SERVE_URL}/ui/")
    page.page.locator("#koi-input").fill(hostile)
    page.page.locator("#lookup-button").click()
    page.page.locator("#message").filter(has_text="<img").wait_for(timeout=30_000)
    assert hostile in page.page.locator("#message").text_content()
    assert page.page.evaluate("window.__owned") is None
    assert page.page.locator("#message img").count() == 0 and page.page.locator("img[src=x]").count() == 0
    assert all("422" in e for e in page.errors), page.errors


def test_the_candidates_page_ranks_links_and_downloads_csv(serve_app, page):
    page.page.goto(f"{SERVE_URL}/ui/candidates.html")
    table = page.page.locator("#candidates-table")
    table.locator("tbody tr").first.wait_for(timeout=60_000)
    ranked = _api("/api/v1/candidates?top=100")["candidates"]
    first = table.locator("tbody tr").first
    assert ranked[0]["koi"] in first.text_content()
    assert first.locator("a").first.get_attribute("href").endswith(f"koi={ranked[0]['koi']}")
    with page.page.expect_download(timeout=30_000) as download:
        page.page.get_by_text("Download CSV").click()
    csv_text = Path(download.value.path()).read_text()
    assert ranked[0]["koi"] in csv_text.splitlines()[2]
    page.screenshot("candidates")
    assert page.errors == []


@pytest.fixture
def reconfigured(serve_app):
    """Deploys a changed Router user_config, waits until it answers, and restores the original."""
    def apply(**changes):
        serve_app.deploy(with_router(serve_app, **changes))
        serve_app.wait_running()
    yield apply
    serve_app.deploy(serve_app.config)
    serve_app.wait_running()
    until(lambda: requests.get(f"{SERVE_URL}/api/v1/models", timeout=10).status_code == 200)


def test_with_authentication_on_the_page_asks_for_a_key_and_then_works(serve_app, page, reconfigured):
    reconfigured(auth={"enabled": True, "requests_per_minute": 6000})
    until(lambda: requests.get(f"{SERVE_URL}/api/v1/models", timeout=10).status_code == 401)
    page.page.goto(KOI_PAGE)
    page.page.locator("#message").filter(has_text="401").wait_for(timeout=30_000)
    page.screenshot("key-prompt")
    page.page.locator("#key-input").fill(PREDICT_KEY)
    page.page.locator("#key-save").click()
    page.page.locator('[data-chart="contributions"][data-model="xgboost"]').wait_for(timeout=60_000)
    assert page.page.evaluate("location.href").find(PREDICT_KEY) == -1  # never in a URL
    assert all("401" in e for e in page.errors), page.errors


def test_the_operations_page_shows_the_running_canary(serve_app, page, reconfigured):
    rules = {"window_s": 60, "min_samples": 1_000_000}  # nothing may roll it back during the test
    reconfigured(experiments={"xgboost": {"candidate": "1.1.0", "weight": 0.2, "rollback": rules}})
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    until(lambda: "xgboost" in _api("/api/v1/experiments", headers=admin)["experiments"])
    page.page.goto(f"{SERVE_URL}/ui/ops.html")
    page.page.locator("#key-input").fill(ADMIN_KEY)
    page.page.locator("#key-save").click()
    experiment = page.page.locator("#experiment-xgboost")
    experiment.locator('[data-variant="candidate"]').wait_for(timeout=30_000)
    assert "1.1.0" in experiment.locator('[data-variant="candidate"]').text_content()
    assert experiment.locator('[data-variant="stable"]').count() == 1
    models = _api("/api/v1/models")
    body = page.page.locator("body").text_content()
    assert all(name in body for name in models) and models["xgboost"]["aliases"]["stable"] in body
    page.screenshot("operations")
    assert all(re.search("40[13]", e) for e in page.errors), page.errors
