"""TritonEncoder with the real `tritonclient` against a KServe-v2 server on loopback.

Triton itself cannot run here, so the server is a small stand-in that speaks the same HTTP
protocol (ready, metadata, infer with binary tensors) and runs the bundle's ONNX model with
onnxruntime, as Triton would run the repository that export/triton.py writes.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from runtime.bundle import open_bundle
from runtime.encoders.factory import load_encoder
from runtime.encoders.onnx_runtime import OnnxEncoder
from runtime.encoders.triton import TritonEncoder
from runtime.config import RuntimeConfig
from runtime.encoders.base import EncoderUnavailable

pytest.importorskip("tritonclient.http")

DTYPES = {"FP32": np.float32, "INT64": np.int64}


def kserve_server(models: dict[tuple[str, str], Path]) -> ThreadingHTTPServer:
    """A KServe-v2 HTTP server on 127.0.0.1 serving ONNX files by (model name, version)."""
    sessions = {key: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for key, path in models.items()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _reply(self, status: int, body: dict | None = None) -> None:
            data = json.dumps(body or {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _model(self) -> tuple[tuple[str, str], list[str]]:
            parts = self.path.split("/")  # /v2/models/<name>/versions/<version>[/ready|/infer]
            return (parts[3], parts[5]), parts[6:]

        def do_GET(self):
            key, rest = self._model()
            session = sessions.get(key)
            if rest == ["ready"]:
                return self._reply(200 if session else 400)
            if session is None:
                return self._reply(404, {"error": "unknown model"})
            io = lambda args: [{"name": a.name, "datatype": "FP32", "shape": [-1, *a.shape[1:]]} for a in args]  # noqa: E731
            self._reply(200, {"name": key[0], "versions": [key[1]], "inputs": io(session.get_inputs()),
                              "outputs": io(session.get_outputs())})

        def do_POST(self):
            key, _ = self._model()
            body = self.rfile.read(int(self.headers["Content-Length"]))
            header_bytes = int(self.headers.get("Inference-Header-Content-Length", len(body)))
            request, binary = json.loads(body[:header_bytes]), body[header_bytes:]
            feeds, offset = {}, 0
            for tensor in request["inputs"]:
                size = tensor["parameters"]["binary_data_size"]
                array = np.frombuffer(binary[offset : offset + size], dtype=DTYPES[tensor["datatype"]])
                feeds[tensor["name"]] = array.reshape(tensor["shape"])
                offset += size
            names = [o["name"] for o in request["outputs"]]
            results = sessions[key].run(names, feeds)
            outputs = [{"name": n, "datatype": "FP32", "shape": list(r.shape), "data": r.ravel().tolist()}
                       for n, r in zip(names, results)]
            self._reply(200, {"model_name": key[0], "model_version": key[1], "outputs": outputs})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # a short poll: shutdown() waits for serve_forever to look, which by default is every 0.5 s
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    return server


@pytest.fixture
def triton(image_artifacts: Path):
    bundle = open_bundle(image_artifacts, "tiny")
    server = kserve_server({("tiny", "1"): bundle.file("image_encoder")})
    yield bundle, f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_triton_url_without_tritonclient_says_what_to_install(image_artifacts, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient", None)  # an import of it now raises ImportError
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)
    with pytest.raises(ImportError, match=r"pip install 'embedserve\[triton\]'"):
        load_encoder(open_bundle(image_artifacts, "tiny"), RuntimeConfig(triton_url="127.0.0.1:9"))


def test_triton_encoder_gives_what_onnxruntime_gives(triton):
    bundle, url = triton
    encoder = load_encoder(bundle, RuntimeConfig(triton_url=url))
    assert isinstance(encoder, TritonEncoder)
    assert (encoder.model_name, encoder.model_version) == ("tiny", "1")  # bundle v1 is Triton version 1
    batch = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)  # (B, C, H, W)
    got = encoder.encode(batch)
    assert got.dtype == np.float32 and got.shape == (3, 16)
    np.testing.assert_allclose(got, OnnxEncoder(bundle, "image_encoder").encode(batch), rtol=1e-5, atol=1e-5)
    encoder.close()


def test_a_model_triton_has_not_loaded_is_not_ready(triton, image_artifacts, write_image_bundle):
    _, url = triton
    write_image_bundle(image_artifacts, "tiny", seed=1)  # v2: the stand-in server only has version 1
    with pytest.raises(EncoderUnavailable, match="no ready model 'tiny' version 2"):
        TritonEncoder(open_bundle(image_artifacts, "tiny"), "image_encoder", url)


def test_an_unreachable_server_is_not_ready_and_says_which_setting(image_artifacts):
    with pytest.raises(EncoderUnavailable, match="check the Triton URL setting"):
        TritonEncoder(open_bundle(image_artifacts, "tiny"), "image_encoder", "127.0.0.1:9", timeout_s=2)


def test_a_clip_text_tower_on_triton_gives_what_onnxruntime_gives(clip_bundle_artifacts):
    # two INT64 inputs, carried stacked (B, 2, T) as the micro-batcher hands them, sent as two tensors
    from runtime.tokens import load_tokenizer, text_encoder_batch

    bundle = open_bundle(clip_bundle_artifacts, "clip")
    server = kserve_server({("clip_text_encoder", "1"): bundle.file("text_encoder")})
    try:
        encoder = TritonEncoder(bundle, "text_encoder", f"127.0.0.1:{server.server_address[1]}")
        tokens = text_encoder_batch(load_tokenizer(bundle.file("tokenizer")), ["a sneaker", "a bag", "une robe"])
        np.testing.assert_allclose(encoder.encode(tokens), OnnxEncoder(bundle, "text_encoder").encode(tokens),
                                   rtol=1e-5, atol=1e-5)
        encoder.close()
    finally:
        server.shutdown()
        server.server_close()
