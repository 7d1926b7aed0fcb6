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


def test_the_openapi_lists_every_limit_with_this_servers_value(tmp_path):
    from serving.docs import LIMITS

    settings = Settings(artifacts_dir=tmp_path, max_images_per_request=7, max_prompts=1234)
    with TestClient(create_app(settings)) as client:
        description = client.get("/openapi.json").json()["info"]["description"]
    for field, _ in LIMITS:
        assert f"`EMBEDSERVE_{field.upper()}`" in description
    assert "| 7 | `EMBEDSERVE_MAX_IMAGES_PER_REQUEST` |" in description
    assert "| 1,234 | `EMBEDSERVE_MAX_PROMPTS` |" in description
    limits = {name for name in Settings.model_fields if name.startswith("max_") or name.endswith("_timeout_s")}
    not_request_limits = {"shutdown_timeout_s", "max_batch_size", "max_batch_tokens", "max_wait_ms"}  # how the server runs, not what a request may hold
    assert limits - not_request_limits <= {field for field, _ in LIMITS}  # a new limit must be listed too
