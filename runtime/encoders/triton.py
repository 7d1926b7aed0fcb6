"""The remote runtime: the same bundle's model, served by a Triton Inference Server.

export/triton.py writes the model repository that Triton loads; this client sends it batches that
runtime/preprocessing.py (images) or runtime/tokens.py (texts) already prepared, so a caller
behaves the same on either runtime. `tritonclient` is an optional extra, imported only when this
encoder is built.
"""

from __future__ import annotations

import http.client
import re
import threading
from typing import Any

import numpy as np

from runtime.bundle import Bundle, Manifest
from runtime.encoders.base import Encoder, EncoderUnavailable, split_inputs

INSTALL_HINT = "pip install 'embedserve[triton]'"
# What tritonclient.http lets through when the server is not there: refused or reset connections and
# timeouts are OSErrors; a connection closed mid-answer is an http.client.HTTPException (geventhttpclient).
CONNECTION_ERRORS = (OSError, http.client.HTTPException)


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
        raise ImportError(f"a Triton URL is set but tritonclient is not installed: {INSTALL_HINT}") from e
    return httpclient, triton_utils


class TritonEncoder(Encoder):
    """Encodes by calling model `triton_model_name(manifest, role)` on the Triton server at `url`.

    Input and output names are the bundle's (`manifest.onnx_io(role)`), which the repository's
    config.pbtxt repeats. The HTTP client is not safe to share between threads, so each thread
    gets its own.
    """

    def __init__(self, bundle: Bundle, role: str, url: str, timeout_s: float = 60.0):
        self._httpclient, self._utils = _import_tritonclient()
        self.manifest, self.role = bundle.manifest, role
        self.url, self.timeout_s = url, timeout_s
        self.model_name = triton_model_name(self.manifest, role)
        self.model_version = triton_model_version(self.manifest)
        io = self.manifest.onnx_io(role)
        self.input_names, self.output_name = list(io.inputs), io.output
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()

        try:
            ready = self._client().is_model_ready(self.model_name, self.model_version)
        except Exception as e:  # connection refused, DNS, timeouts: all say the same to an operator
            raise EncoderUnavailable(f"cannot reach Triton at {url}: {e}; check the Triton URL setting and that the server runs") from e
        if not ready:
            raise EncoderUnavailable(
                f"Triton at {url} has no ready model {self.model_name!r} version {self.model_version or 'latest'}; "
                "load the repository that `embedserve export --triton` wrote under artifacts/triton"
            )

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
        batch = np.ascontiguousarray(batch)  # (B, C, H, W) float32, or (B, k, T) int64 for k inputs
        requests = []
        for name, array in zip(self.input_names, split_inputs(batch, self.input_names, self.manifest.name)):
            request = self._httpclient.InferInput(name, list(array.shape), self._utils.np_to_triton_dtype(array.dtype))
            request.set_data_from_numpy(array, binary_data=True)
            requests.append(request)
        wanted = self._httpclient.InferRequestedOutput(self.output_name, binary_data=True)
        try:
            result = self._client().infer(self.model_name, requests, model_version=self.model_version, outputs=[wanted])
        except self._utils.InferenceServerException as e:
            raise EncoderUnavailable(f"Triton could not run {self.model_name!r}: {e}; retry, or check the server's log") from e
        except CONNECTION_ERRORS as e:  # the server stopped, restarts, or the network between dropped us
            raise EncoderUnavailable(f"cannot reach Triton at {self.url} to run {self.model_name!r}: {e!r}; "
                                     "check that the server runs, then retry") from e
        return np.asarray(result.as_numpy(self.output_name), dtype=np.float32)  # (B, D)

    def close(self) -> None:
        with self._clients_lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
