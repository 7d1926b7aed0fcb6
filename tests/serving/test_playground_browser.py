"""The playground in a real browser: Debian's headless Chromium, driven by Playwright, against a
live server. It classifies a Fashion-MNIST image, solves an analogy, searches by text (with
thumbnails) and starts a re-embedding job, and fails on any console error, page error or failed
request. One screenshot per tab goes to $EMBEDSERVE_SCREENSHOTS (a temporary folder otherwise);
with $EMBEDSERVE_PLAYGROUND_ARTIFACTS (`make screenshots`: the demo's artifacts) it runs on
those models instead of tiny ones built here (its indexes copied, so the job writes elsewhere)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
FASHION_MNIST_SNEAKER = 7
INDEX = "fashion-mnist-clip"  # the index built here: CLIP embeddings of Fashion-MNIST test images


@pytest.fixture
def artifacts(tmp_path: Path, clip_artifacts: Path) -> Path:
    """The demo's artifacts when named, else: the tiny CLIP model, the planted word vectors and
    an index of 40 Fashion-MNIST test images embedded with that model."""
    named = os.environ.get("EMBEDSERVE_PLAYGROUND_ARTIFACTS")
    if named:
        # the demo's models as they are, its indexes copied: the job the test starts writes its new
        # version (and the jobs' database) here, never into the demo's own folder
        scratch = tmp_path / "demo-artifacts"
        scratch.mkdir()
        (scratch / "models").symlink_to(Path(named).resolve() / "models", target_is_directory=True)
        shutil.copytree(Path(named) / "indexes", scratch / "indexes")
        return scratch
    from export.word_vectors import write_word_vectors_bundle
    from index.build import build_image_index
    from tests.conftest import planted_vectors

    words, vectors = planted_vectors()
    write_word_vectors_bundle(clip_artifacts, "words", words, np.arange(len(words), 0, -1) * 10, vectors)
    build_image_index(clip_artifacts, INDEX, "clip", "fashion-mnist:test", limit=40, progress=False)
    return clip_artifacts


@pytest.fixture
def sneaker_png(tmp_path: Path) -> Path:
    """The first Fashion-MNIST test image of a sneaker, as a PNG to upload."""
    from runtime.fashion_mnist import load_fashion_mnist

    images, labels = load_fashion_mnist(split="test")
    path = tmp_path / "sneaker.png"
    Image.fromarray(images[int(np.flatnonzero(labels == FASHION_MNIST_SNEAKER)[0])], "L").save(path)
    return path


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("EMBEDSERVE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (its `browser` target), "
                    "or run `sudo apt-get install chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def watch(page) -> list[str]:
    """Every console error, uncaught exception and failed request of `page`, as it happens."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
    return problems


def test_the_playground_classifies_searches_solves_and_runs_jobs(browser, start_server, artifacts: Path,
                                                                 sneaker_png: Path, screenshots: Path):
    demo = bool(os.environ.get("EMBEDSERVE_PLAYGROUND_ARTIFACTS"))
    with start_server(artifacts, batching="true") as server:
        page = browser.new_page(viewport={"width": 1200, "height": 820})
        problems = watch(page)
        page.goto(server.url + "/")
        page.wait_for_function("() => document.getElementById('server').textContent.startsWith('ready')")
        explain = page.evaluate("() => fetch('/openapi.json').then(r => r.json()).then(o => '/explain' in o.paths)")

        # Zero-shot: one bar per class, probabilities summing to 1, the normalisation and the latency shown
        page.set_input_files("#zs-file", str(sneaker_png))
        page.wait_for_selector("#zs-bars li")
        classes = page.input_value("#zs-classes").split("\n")
        bars = page.locator("#zs-bars li")
        assert bars.count() == len(classes) == 10
        probabilities = [float(p) for p in bars.evaluate_all("rows => rows.map(r => r.dataset.probability)")]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert probabilities == sorted(probabilities, reverse=True)
        meta = page.text_content("#zs-meta")
        assert "normalisation: " in meta and " ms" in meta
        if explain:  # POST /explain is on this server: its overlay shows beside the bars
            bars.first.locator("button").click()
            page.wait_for_function("() => document.querySelector('#zs-explain img').naturalWidth > 0")
        page.screenshot(path=str(screenshots / "zero-shot.png"), full_page=True)

        # Words: an analogy and the nearest words
        page.click("#tabs button[data-tab=words]")
        page.click("#analogy-form button[type=submit]")
        page.wait_for_selector("#words-results li")
        first = page.text_content("#words-results li:first-child .label")
        assert first == "queen" or demo, first
        page.click("#similar-form button[type=submit]")
        page.wait_for_function("() => document.getElementById('words-meta').textContent.startsWith('nearest')")
        page.click("#analogy-form button[type=submit]")
        page.wait_for_function("() => document.getElementById('words-meta').textContent.startsWith('king')")
        page.screenshot(path=str(screenshots / "words.png"), full_page=True)

        # Search by text on the CLIP index: a grid of hits whose thumbnails load
        page.click("#tabs button[data-tab=search]")
        clip_index = INDEX if not demo else "fashion-mnist-test-clip"
        page.select_option("#search-index", clip_index)
        page.fill("#search-k", "12")
        page.click("#search-form button[type=submit]")
        page.wait_for_selector("#search-hits li")
        assert page.locator("#search-hits li").count() == 12
        page.wait_for_function("() => [...document.querySelectorAll('#search-hits img')].every(i => i.complete && i.naturalWidth > 0)")
        if explain:  # by image, with the overlay of what makes the nearest item near
            page.check("input[name=mode][value=image]")
            page.set_input_files("#search-file", str(sneaker_png))
            page.wait_for_function("() => document.getElementById('search-meta').textContent.includes('ms') && "
                                   "document.querySelector('#search-hits li button')")
            page.locator("#search-hits li button").first.click()
            page.wait_for_function("() => document.querySelector('#search-explain img').naturalWidth > 0")
            page.wait_for_function("() => [...document.querySelectorAll('#search-hits img')].every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(screenshots / "search.png"), full_page=True)

        # Jobs: re-embed the index, watched to the end through the live list
        page.click("#tabs button[data-tab=jobs]")
        job_index, items = (INDEX, 40) if not demo else ("fashion-mnist-test", 10_000)
        page.select_option("#job-index", job_index)
        assert page.input_value("#job-source") == f"index:{job_index}"
        page.click("#job-form button[type=submit]")
        page.wait_for_selector("#jobs-list li[data-state=succeeded]", timeout=300_000)
        assert f"{items:,}/{items:,} items".replace(",", "") in page.text_content("#jobs-list li[data-state=succeeded]").replace(",", "")
        page.screenshot(path=str(screenshots / "jobs.png"), full_page=True)

        assert page.locator(".error:not([hidden])").count() == 0, page.locator(".error:not([hidden])").all_text_contents()
        assert not problems, "\n".join(problems)


def test_the_page_asks_for_a_key_and_then_works_with_it(browser, start_server, artifacts: Path):
    with start_server(artifacts, api_keys="sesame") as server:
        page = browser.new_page()
        problems = watch(page)
        page.goto(server.url + "/")
        page.wait_for_selector("#key-form:not([hidden])")
        assert "needs an API key" in page.text_content("#server")
        page.fill("#key", "sesame")
        page.click("#key-form button[type=submit]")
        page.wait_for_function("() => document.getElementById('server').textContent.startsWith('ready')")
        assert page.locator("#search-index option").count() >= 1  # GET /indexes answered with the key
        # the one refusal before the key was typed is the browser's only complaint
        assert all("401" in p for p in problems), problems


def test_without_explain_on_the_server_the_bars_offer_none(browser, start_server, artifacts: Path, sneaker_png: Path):
    with start_server(artifacts) as server:
        page = browser.new_page()
        problems = watch(page)

        def without_explain(route):  # the OpenAPI of a server from before POST /explain
            openapi = route.fetch().json()
            openapi["paths"].pop("/explain", None)
            route.fulfill(json=openapi)

        page.route("**/openapi.json", without_explain)
        page.goto(server.url + "/")
        page.wait_for_function("() => document.getElementById('server').textContent.startsWith('ready')")
        page.set_input_files("#zs-file", str(sneaker_png))
        page.wait_for_selector("#zs-bars li")
        assert page.locator("#zs-bars li").count() == 10 and page.locator("#zs-bars button").count() == 0
        assert not problems, "\n".join(problems)
