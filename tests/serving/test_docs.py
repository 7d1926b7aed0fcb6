"""/docs and /redoc work offline: every file they load is served by the server itself."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_pages_load_nothing_from_another_host(tmp_path, page):
    with TestClient(create_app(Settings(artifacts_dir=tmp_path))) as client:
        html = client.get(page)
        assert html.status_code == 200
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html.text), html.text  # no CDN, no fonts
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
        assert any(a.endswith(".js") for a in assets)
        for asset in assets:
            response = client.get(asset)
            assert response.status_code == 200 and len(response.content) > 1000, asset
        assert client.get("/openapi.json").status_code == 200  # what the page reads
