from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings


@pytest.fixture
def client(words_artifacts: Path):
    with TestClient(create_app(Settings(artifacts_dir=words_artifacts, max_k=50))) as client:
        yield client


def test_analogy_answers_queen_first(client: TestClient):
    response = client.get("/analogy", params={"a": "king", "b": "man", "c": "woman", "k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "words" and body["version"] == "v1" and body["method"] == "3cosadd"
    assert body["results"][0]["word"] == "queen" and len(body["results"]) == 3


def test_analogy_3cosmul_and_case_insensitive_words(client: TestClient):
    response = client.get("/analogy", params={"a": "King", "b": "MAN", "c": "woman", "method": "3cosmul"})
    assert response.status_code == 200
    assert response.json()["results"][0]["word"] == "queen"


def test_similar_handles_non_ascii_words(client: TestClient):
    response = client.get("/similar", params={"word": "café", "k": 2})
    assert response.status_code == 200
    assert {r["word"] for r in response.json()["results"]} == {"apple", "banana"}


def test_unknown_word_is_404_naming_the_word(client: TestClient):
    response = client.get("/analogy", params={"a": "king", "b": "zebra", "c": "woman"})
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_word" and "'zebra'" in response.json()["detail"]


def test_unknown_model_is_404_listing_the_available_ones(client: TestClient):
    response = client.get("/similar", params={"word": "king", "model": "nope"})
    assert response.status_code == 404 and "words" in response.json()["detail"]


@pytest.mark.parametrize(
    "params",
    [
        {"a": "king", "b": "man", "c": "woman", "k": 0},
        {"a": "king", "b": "man", "c": "woman", "k": "five"},
        {"a": "king", "b": "man", "c": "woman", "k": 51},  # above max_k
        {"a": "king", "b": "man", "c": "woman", "method": "3cosdiv"},
        {"a": "king", "b": "man"},
        {"a": "", "b": "man", "c": "woman"},
    ],
)
def test_bad_parameters_are_422(client: TestClient, params):
    response = client.get("/analogy", params=params)
    assert response.status_code == 422, response.text


def test_health_ready_and_metrics(client: TestClient):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["models"][0]["name"] == "words"
    client.get("/similar", params={"word": "king"})
    metrics = client.get("/metrics").text
    assert 'embedserve_requests_total{method="GET",route="/similar",status="200"}' in metrics


def test_not_ready_without_models(tmp_path: Path):
    with TestClient(create_app(Settings(artifacts_dir=tmp_path))) as client:
        assert client.get("/readyz").status_code == 503
        assert client.get("/similar", params={"word": "king"}).status_code == 404


def test_openapi_documents_the_word_endpoints(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/analogy", "/similar", "/healthz", "/readyz"} <= set(paths)


def test_a_server_without_word_vectors_says_so(tmp_path):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    with TestClient(create_app(Settings(artifacts_dir=tmp_path))) as client:
        response = client.get("/analogy?a=king&b=man&c=woman")
    assert response.status_code == 404
    assert "no word-vectors model" in response.json()["detail"] and "None" not in response.json()["detail"]
