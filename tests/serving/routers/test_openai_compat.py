import base64
from pathlib import Path

import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings


@pytest.fixture(scope="module")
def client(clip_bundle_artifacts: Path):
    with TestClient(create_app(Settings(artifacts_dir=clip_bundle_artifacts, api_keys="sk-test"))) as c:
        yield c


def stock_client(client: TestClient, key: str = "sk-test") -> openai.OpenAI:
    # the official client, unchanged, talking to the app through the test client's transport
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0)


def native(client: TestClient, path: str, body: dict) -> np.ndarray:
    response = client.post(path, json=body, headers={"Authorization": "Bearer sk-test"})
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"])


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_the_stock_openai_client_embeds_texts_as_embed_text_does(client: TestClient, encoding_format: str):
    texts = ["a sneaker", "a red dress"]
    kwargs = {} if encoding_format == "base64" else {"encoding_format": "float"}  # the client's default is base64
    result = stock_client(client).embeddings.create(model="clip", input=texts, **kwargs)
    got = np.array([d.embedding for d in result.data])
    np.testing.assert_allclose(got, native(client, "/embed/text", {"texts": texts, "model": "clip"}), atol=1e-6)
    assert [d.index for d in result.data] == [0, 1] and result.model == "clip"
    assert result.usage.prompt_tokens > 2 and result.usage.total_tokens == result.usage.prompt_tokens


def test_data_url_images_embed_as_embed_image_does(client: TestClient, make_png):
    png = make_png(2)
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    result = stock_client(client).embeddings.create(model="clip", input=[url, "a bag"], encoding_format="float")
    image = native(client, "/embed/image", {"images": [base64.b64encode(png).decode()], "model": "clip"})[0]
    np.testing.assert_allclose(result.data[0].embedding, image, atol=1e-6)
    assert stock_client(client).embeddings.create(model="tiny", input=url).data[0].embedding  # an image encoder
    short = stock_client(client).embeddings.create(model="clip", input="a bag", dimensions=4, encoding_format="float")
    assert len(short.data[0].embedding) == 4 and np.linalg.norm(short.data[0].embedding) == pytest.approx(1, abs=1e-5)


def test_models_and_errors_come_in_openai_s_shape(client: TestClient):
    models = stock_client(client).models.list()
    assert [m.id for m in models.data] == ["clip", "tiny"]
    with pytest.raises(openai.NotFoundError) as missing:
        stock_client(client).embeddings.create(model="nope", input="x")
    assert missing.value.body["code"] == "unknown_model" and "GET /v1/models" in missing.value.body["message"]
    with pytest.raises(openai.UnprocessableEntityError):
        stock_client(client).embeddings.create(model="tiny", input="a text for an image model")
    no_key = client.post("/v1/embeddings", json={"model": "clip", "input": "x"})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "unauthorized"
    with pytest.raises(openai.PermissionDeniedError):
        stock_client(client, key="sk-wrong").embeddings.create(model="clip", input="x")
    response = client.post("/v1/embeddings", json={"model": "clip", "input": "x" * 200_000},
                           headers={"Authorization": "Bearer sk-test"})
    assert response.status_code == 413 and set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_the_model_is_named_the_same_way_everywhere(client: TestClient, make_png):
    auth = {"Authorization": "Bearer sk-test"}
    assert client.post("/embed/text?model=nope", json={"texts": ["a bag"]}, headers=auth).status_code == 404
    assert client.post("/embed/text?model=clip", json={"texts": ["a bag"], "model": "nope"}, headers=auth).status_code == 200
    files = [("file", ("a.png", make_png(1), "image/png"))]  # `file` as well as `files`
    response = client.post("/zero-shot?model=nope", files=files, data={"classes": ["a", "b"]}, headers=auth)
    assert response.status_code == 404 and "nope" in response.json()["detail"]
    assert client.post("/zero-shot?model=clip", files=files, data={"classes": ["a", "b"]}, headers=auth).status_code == 200
    assert client.post("/embed/image?model=tiny", files=files, headers=auth).status_code == 200


@pytest.fixture(scope="module")
def minilm_client(minilm_artifacts: Path):
    with TestClient(create_app(Settings(artifacts_dir=minilm_artifacts, api_keys="sk-test"))) as c:
        yield c


def test_the_stock_openai_client_embeds_with_an_imported_text_encoder(minilm_client: TestClient):
    texts = ["How do I bake bread?", "A recipe for sourdough bread"]
    result = stock_client(minilm_client).embeddings.create(model="minilm", input=texts)  # base64, the client's default
    got = np.array([d.embedding for d in result.data])
    np.testing.assert_allclose(got, native(minilm_client, "/embed/text", {"texts": texts, "model": "minilm"}), atol=1e-6)
    assert got.shape == (2, 384) and result.model == "minilm"
    # [CLS] how do i ba ##ke bread ? [SEP] and [CLS] a recipe for sour ##dou ##gh bread [SEP]: padding not counted
    assert result.usage.prompt_tokens == 9 + 9
    assert [m.id for m in stock_client(minilm_client).models.list().data] == ["minilm", "tiny"]
    url = "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()
    with pytest.raises(openai.UnprocessableEntityError, match="texts only"):
        stock_client(minilm_client).embeddings.create(model="minilm", input=["a text", url])


def test_token_ids_are_refused_with_what_to_send_instead(client: TestClient):
    for ids in ([101, 2023, 102], [[101, 2023], [7, 8]]):  # what LangChain's OpenAIEmbeddings sends by default
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            stock_client(client).embeddings.create(model="clip", input=ids)
        message = str(refused.value)
        assert "own tokenizer" in message and "check_embedding_ctx_length=False" in message


def test_truncate_embeds_a_long_input_as_embed_text_does_and_without_it_says_it_exists(client: TestClient):
    long = "a sneaker with white laces " * 10
    key = {"Authorization": "Bearer sk-test"}
    refused = client.post("/v1/embeddings", json={"model": "clip", "input": long}, headers=key)
    assert refused.status_code == 422 and '"truncate": true' in refused.json()["error"]["message"]
    response = client.post("/v1/embeddings", json={"model": "clip", "input": [long], "truncate": True}, headers=key)
    assert response.status_code == 200, response.text
    expected = native(client, "/embed/text", {"texts": [long], "truncate": True})
    np.testing.assert_allclose(response.json()["data"][0]["embedding"], expected[0], atol=1e-5)
    assert response.json()["usage"]["prompt_tokens"] == 24  # the context length: what the tower read
