"""Fixtures for tests that need a real server process: a deliberately slow model, so that
requests are still in flight when a test disconnects, times out or stops the server, and a
helper that starts `embedserve serve` on a free port and waits until it is ready."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.bundle import Manifest, OnnxIO, write_bundle
from runtime.preprocessing import PreprocessingSpec

SLOW_LAYERS, SLOW_WIDTH = 200, 2048  # about 1.7 GFLOP per image: 64 images take a second or more on one core


def write_slow_image_bundle(artifacts: Path, name: str = "slow") -> None:
    """An image encoder (B, 1, 8, 8) → (B, 16) that spends about 1.7 GFLOP per image: a stack of
    tanh(x @ W) layers sharing one 2048 × 2048 matrix (a 17 MB file)."""
    rng = np.random.default_rng(0)
    w_in = rng.normal(scale=0.1, size=(64, SLOW_WIDTH)).astype(np.float32)
    w = rng.normal(scale=1 / np.sqrt(SLOW_WIDTH), size=(SLOW_WIDTH, SLOW_WIDTH)).astype(np.float32)
    w_out = rng.normal(size=(SLOW_WIDTH, 16)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["images"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W_in"], ["h0"])]
    for i in range(SLOW_LAYERS):
        nodes += [helper.make_node("MatMul", [f"h{i}", "W"], [f"m{i}"]), helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"])]
    nodes.append(helper.make_node("MatMul", [f"h{SLOW_LAYERS}", "W_out"], ["embeddings"]))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(w_in, "W_in"), numpy_helper.from_array(w, "W"), numpy_helper.from_array(w_out, "W_out")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = PreprocessingSpec(mode="L", resize=8, crop=8, mean=(0.5,), std=(0.5,))
    manifest = Manifest(name=name, kind="image-encoder", method="simclr", dim=16, normalized=False,
                        files={"image_encoder": "image_encoder.onnx"}, preprocessing=spec,
                        onnx={"image_encoder": OnnxIO(("images",), "embeddings")})
    write_bundle(artifacts, manifest, lambda folder: onnx.save(model, str(folder / "image_encoder.onnx")))


@pytest.fixture
def slow_artifacts(tmp_path: Path) -> Path:
    """An artifacts folder holding the slow image encoder 'slow'."""
    write_slow_image_bundle(tmp_path / "artifacts")
    return tmp_path / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics (0 when absent)."""
        _, text = self.get("/metrics")
        wanted = {f'{k}="{v}"' for k, v in labels.items()}
        for line in text.decode().splitlines():
            match = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
            if match and wanted <= set(filter(None, (match.group(1) or "").split(","))):
                return float(match.group(2))
        return 0.0

    def wait_for(self, condition, what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited ({self.process.returncode}) waiting for {what}:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)


@contextmanager
def live_server(artifacts: Path, **settings) -> LiveServer:
    """`embedserve serve` on a free loopback port with EMBEDSERVE_<setting> for each keyword, ready
    (/readyz 200) when entered, stopped (SIGKILL if it must) when left."""
    port = free_port()
    env = {**os.environ, "EMBEDSERVE_ARTIFACTS_DIR": str(artifacts), "EMBEDSERVE_PORT": str(port),
           "EMBEDSERVE_LOG_LEVEL": "warning", "EMBEDSERVE_METRICS_PUBLIC": "true",
           **{f"EMBEDSERVE_{k.upper()}": str(v) for k, v in settings.items()}}
    log = artifacts.parent / f"server-{port}.log"
    with open(log, "wb") as out:
        # a session of its own, so that leaving kills the workers of `--workers N` with their supervisor
        process = subprocess.Popen([sys.executable, "-m", "embedserve", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = LiveServer(process, port, log)
    try:
        server.wait_for(lambda: _ready(server), "/readyz")
        yield server
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # the whole group has exited already
            pass
        process.wait(timeout=30)


def _ready(server: LiveServer) -> bool:
    try:
        return server.get("/readyz")[0] == 200
    except OSError:
        return False


@pytest.fixture
def start_server():
    """live_server(artifacts, **settings): a context manager giving a running LiveServer."""
    return live_server
