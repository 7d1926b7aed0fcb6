"""GET /indexes/{name}/items/{id}/image: an indexed item's image, read again from the source its
metadata records, as a bounded PNG thumbnail, only from under the server's data roots."""

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index.build import build_image_index
from serving.app import create_app
from serving.settings import Settings
from tests.images import write_pngs


@pytest.fixture
def artifacts(image_artifacts: Path, tmp_path: Path) -> Path:
    """'tiny' plus index 'pics' of three 12×10 PNGs and index 'big' of two 600×400 ones, both under tmp/data."""
    build_image_index(image_artifacts, "pics", "tiny", write_pngs(tmp_path / "data" / "pics", 3), progress=False)
    build_image_index(image_artifacts, "big", "tiny", write_pngs(tmp_path / "data" / "big", 2, size=(600, 400)), progress=False)
    return image_artifacts


def client_for(artifacts: Path, data_roots: Path | str) -> TestClient:
    return TestClient(create_app(Settings(artifacts_dir=artifacts, data_roots=str(data_roots))))


@pytest.fixture
def client(artifacts: Path, tmp_path: Path):
    with client_for(artifacts, tmp_path / "data") as client:
        yield client


def decoded(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_an_items_image_comes_back_as_it_was_indexed(client: TestClient, tmp_path: Path):
    response = client.get("/indexes/pics/items/1/image")
    image = decoded(response)
    assert image.size == (12, 10)  # small images are never enlarged
    original = Image.open(tmp_path / "data" / "pics" / "001.png")
    np.testing.assert_array_equal(np.asarray(image), np.asarray(original))
    assert "max-age" in response.headers["cache-control"]


@pytest.mark.parametrize("size, expected", [(None, (128, 85)), (64, (64, 43)), (256, (256, 171))])
def test_a_large_image_is_shrunk_to_the_size_asked(client: TestClient, size, expected):
    query = f"?size={size}" if size else ""
    assert decoded(client.get(f"/indexes/big/items/0/image{query}")).size == expected


@pytest.mark.parametrize("path, status, needle", [
    ("/indexes/pics/items/7/image", 404, "id 7"),
    ("/indexes/nope/items/0/image", 404, "pics"),
    ("/indexes/pics/items/0/image?size=1000", 422, "size"),
])
def test_unknown_items_and_sizes_say_so(client: TestClient, path, status, needle):
    response = client.get(path)
    assert response.status_code == status and needle in response.json()["detail"], response.text


def test_an_item_added_as_a_vector_has_no_image_to_show(client: TestClient):
    added = client.post("/indexes/pics/items", json={"items": [{"id": 50, "vector": [1.0] * 16, "metadata": {"n": 1}}]})
    assert added.status_code == 200, added.text
    response = client.get("/indexes/pics/items/50/image")
    assert response.status_code == 422 and "no image source" in response.json()["detail"]


def test_an_image_outside_the_data_roots_is_forbidden(artifacts: Path, tmp_path: Path):
    (tmp_path / "elsewhere").mkdir()
    with client_for(artifacts, tmp_path / "elsewhere") as client:
        response = client.get("/indexes/pics/items/0/image")
    assert response.status_code == 403, response.text
    assert str(tmp_path / "data") not in response.text  # the server's folders are not shown


def test_an_image_that_links_out_of_the_data_roots_is_forbidden_saying_it_is_a_link(image_artifacts: Path, tmp_path: Path,
                                                                                     tmp_path_factory):
    outside = write_pngs(tmp_path_factory.mktemp("elsewhere"), 2)  # outside the artifacts folder too
    (tmp_path / "data" / "links").mkdir(parents=True)
    for name in ("000.png", "001.png"):
        (tmp_path / "data" / "links" / name).symlink_to(outside / name)
    build_image_index(image_artifacts, "links", "tiny", tmp_path / "data" / "links", progress=False)  # the CLI follows them
    with client_for(image_artifacts, tmp_path / "data") as client:
        response = client.get("/indexes/links/items/1/image")
    assert response.status_code == 403, response.text
    detail = response.json()["detail"]
    assert f"links/001.png is a symbolic link to {outside}/001.png" in detail and "EMBEDSERVE_DATA_ROOTS" in detail


def test_an_image_gone_from_disk_says_so(client: TestClient, tmp_path: Path):
    (tmp_path / "data" / "pics" / "002.png").unlink()
    response = client.get("/indexes/pics/items/2/image")
    assert response.status_code == 422 and "cannot be read again" in response.json()["detail"]
