"""The remote runtime: the same bundle's model, served by a Triton Inference Server.

export/triton.py writes the model repository that Triton loads; this client sends it batches that
serving/preprocessing.py already prepared, so the gateway behaves the same on either runtime.
`tritonclient` is an optional extra and is imported only when this encoder is built.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np

from export.bundle import Bundle, Manifest
from serving.encoders.base import Encoder
from serving.errors import NotReady

INSTALL_HINT = "pip install 'embedserve[triton]'"


def triton_model_name(manifest: Manifest, role: str) -> str:
    """The name of a bundle's model in the Triton repository: the bundle's name, or name_role for
    a bundle that holds two models (image-text encoders). export/triton.py writes the same names."""
    return manifest.name if manifest.kind in ("image-encoder", "text-encoder") else f"{manifest.name}_{role}"


def triton_model_version(manifest: Manifest) -> str:
    """Bundle version "v3" is Triton version "3"; anything else asks for Triton's latest ("")."""
    match = re.fullmatch(r"v(\d+)", manifest.version)
    return match.group(1) if match else ""


def _import_tritonclient() -> tuple[Any, Any]:
    try:
        import tritonclient.http as httpclient
        import tritonclient.utils as triton_utils
    except ImportError as e:
        raise ImportError(f"EMBEDSERVE_TRITON_URL is set but tritonclient is not installed: {INSTALL_HINT}") from e
    return httpclient, triton_utils


class TritonEncoder(Encoder):
    """Encodes by calling model `triton_model_name(manifest, role)` on the Triton server at `url`.

    Input and output names come from the manifest's `extra` ("onnx_input", "onnx_output"), else
    from the model's metadata on the server. The HTTP client is not safe to share between
    threads, so each thread gets its own.
    """

    def __init__(self, bundle: Bundle, role: str, url: str, timeout_s: float = 60.0):
        self._httpclient, self._utils = _import_tritonclient()
        self.manifest = bundle.manifest
        self.url, self.timeout_s = url, timeout_s
        self.model_name = triton_model_name(self.manifest, role)
        self.model_version = triton_model_version(self.manifest)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()

        client = self._client()
        try:
            ready = client.is_model_ready(self.model_name, self.model_version)
        except Exception as e:  # connection refused, DNS, timeouts: all say the same to an operator
            raise NotReady(f"cannot reach Triton at {url}: {e}; check EMBEDSERVE_TRITON_URL and that the server runs") from e
        if not ready:
            raise NotReady(
                f"Triton at {url} has no ready model {self.model_name!r} version {self.model_version or 'latest'}; "
                "load the repository that `embedserve export` wrote under artifacts/triton"
            )
        extra = self.manifest.extra
        if "onnx_input" in extra and "onnx_output" in extra:
            self.input_name, self.output_name = extra["onnx_input"], extra["onnx_output"]
        else:
            metadata = client.get_model_metadata(self.model_name, self.model_version)
            self.input_name, self.output_name = metadata["inputs"][0]["name"], metadata["outputs"][0]["name"]

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._httpclient.InferenceServerClient(
                url=self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
            )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def encode(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch)  # (B, C, H, W) float32 or (B, T) int64
        request = self._httpclient.InferInput(self.input_name, list(batch.shape), self._utils.np_to_triton_dtype(batch.dtype))
        request.set_data_from_numpy(batch, binary_data=True)
        wanted = self._httpclient.InferRequestedOutput(self.output_name, binary_data=True)
        try:
            result = self._client().infer(self.model_name, [request], model_version=self.model_version, outputs=[wanted])
        except self._utils.InferenceServerException as e:
            raise NotReady(f"Triton could not run {self.model_name!r}: {e}; retry, or check the server's log") from e
        return np.asarray(result.as_numpy(self.output_name), dtype=np.float32)  # (B, D)

    def close(self) -> None:
        with self._clients_lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
