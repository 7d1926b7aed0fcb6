"""The playground page and its files: served from the package with a strict Content-Security-
Policy, loading nothing from another host, and open without a key while the API it calls is not."""

import re

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.playground import ASSETS, FOLDER
from serving.settings import Settings

KEY = "sesame"


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(Settings(artifacts_dir=tmp_path, api_keys=KEY))) as client:
        yield client


def test_the_page_and_every_file_it_loads_are_served_with_a_strict_policy(client: TestClient):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' data: blob:" in policy and "unsafe" not in policy
    linked = re.findall(r"""(?:src|href)=["'](/playground/[^"']+)["']""", page.text)
    imported = {f"/playground/{name}" for text in ASSETS for name in re.findall(r'from "\./([^"]+)"', (FOLDER / text).read_text())}
    assert linked and imported
    for path in {*linked, *imported}:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].split(";")[0] in ("text/javascript", "text/css"), path
        assert "content-security-policy" in response.headers
    assert {*linked, *imported} == {f"/playground/{name}" for name in ASSETS}  # every file shipped is used


def test_no_file_names_another_host_nor_runs_inline_code():
    for path in sorted(FOLDER.iterdir()):
        if path.suffix not in (".html", ".js", ".css"):
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?:|//cdn|url\(\s*['\"]?//", text), path.name  # offline: nothing from elsewhere
    html = (FOLDER / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)  # every script from a file: the policy forbids inline ones
    assert not re.search(r"\sstyle=|\son[a-z]+=", html)  # nor inline styles or handlers


def test_the_page_loads_without_a_key_while_the_api_still_needs_one(client: TestClient):
    assert client.get("/").status_code == 200
    assert client.get("/playground/playground.js").status_code == 200
    assert client.get("/playground/nothing.js").status_code == 401  # only the files shipped are open
    assert client.get("/indexes").status_code == 401
    assert client.get("/jobs").status_code == 401
    assert client.get("/indexes", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_the_page_is_not_part_of_the_api_it_calls(client: TestClient):
    paths = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()["paths"]
    assert "/" not in paths and not any(p.startswith("/playground/") for p in paths)


def test_an_installed_package_carries_the_page(tmp_path):
    # the Docker image installs the project, not the checkout: the page's files must be in the wheel
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).parents[3]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("embedserve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"serving/playground/{name}" for name in ["index.html", *ASSETS]} <= names
