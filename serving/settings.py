"""Server settings, read once from environment variables prefixed `EMBEDSERVE_`.

Nothing else in serving/ reads the environment: the app factory takes a `Settings` and hands
it down (routers get it through `Depends(get_settings)` or from the registry).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from index.config import FLAT_MAX_COUNT, HNSW_MAX_COUNT, IndexConfig
from runtime.config import RuntimeConfig
from runtime.preprocessing import ImageLimits

if TYPE_CHECKING:
    from index.jobs_ray import RayConfig

# A text model's batch on a CPU: all-MiniLM-L6-v2 at int8 on one core of this project's 2-core
# VNNI machine ran most texts per second at 256-512 tokens a batch (32 texts of 15 tokens, 16 of
# 32, 2-4 of 128) and a quarter fewer at 4,096 (32 texts of 128), whose activations outgrow the
# caches; fp32 the same way, by a tenth. A GPU wants its batches as large as they come.
CPU_BATCH_TOKENS = 512


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDSERVE_", frozen=True)

    artifacts_dir: Path = Field(Path("artifacts"), description="folder holding models/ and indexes/")
    host: str = Field("127.0.0.1", description="address `embedserve serve` binds")
    port: int = Field(8000, ge=1, le=65535, description="port `embedserve serve` binds")
    default_word_model: str | None = Field(None, description="word-vectors model used when a request names none")
    default_image_model: str | None = Field(None, description="image encoder used when a request names none")
    default_text_model: str | None = Field(None, description="text model for /embed/text, /v1/embeddings and (a CLIP model) /zero-shot when a request names none; unset: the first CLIP model, else the first text encoder")
    default_index: str | None = Field(None, description="index used by /search when a request names none")
    batching: bool = Field(True, description="group concurrent requests into one model call")
    max_batch_size: int = Field(32, ge=1, description="most images or texts in one model call")
    max_batch_tokens: int = Field(
        0, ge=0, description="most tokens in one text model call (its texts times the longest one's tokens, as the batch "
                             f"is padded to it); 0: {CPU_BATCH_TOKENS} where the model runs on the CPU, whose caches favour "
                             "small batches of long texts, and no limit but max_batch_size elsewhere"
    )
    max_wait_ms: float = Field(
        0.0, ge=0, description="extra wait for a batch to fill; 0: a batch is what queued while the model was busy"
    )
    batches_in_flight: int = Field(
        2, ge=1, description="model calls per model running at once: while one runs, the event loop answers the batch before "
                             "it and reads the requests for the next, so neither the model nor the HTTP side waits on the other"
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="largest request body; refused (413) from its Content-Length or as it streams"
    )
    max_inflight_requests: int = Field(
        64, ge=1, description="requests in progress at once (per process); past it requests answer 429 with "
                              "Retry-After at once, so an overloaded server still answers in bounded time"
    )
    max_inflight_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="bytes of request bodies held at once, all requests together; past it "
                                             "requests answer 429 with Retry-After before their body is read"
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="a request unanswered after this long is stopped and answered 503 (writes exempt)"
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="request line and headers together; past it the connection is answered 431 and "
                                        "closed as the bytes arrive, before they are held whole"
    )
    body_timeout_s: float = Field(60.0, gt=0, description="a request body must have arrived this long after it began (else 408)")
    header_timeout_s: float = Field(10.0, gt=0, description="a request's headers must have arrived this long after it began (else 408)")
    keep_alive_s: float = Field(5.0, gt=0, description="an idle kept-alive connection is closed after this long")
    shutdown_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long requests in flight may take to finish before they are cut"
    )
    max_queue: int = Field(
        512, ge=1, description="rows (images, texts) waiting per model; past it requests answer 429 with Retry-After"
    )
    max_images_per_request: int = Field(64, ge=1, description="most images one request may send")
    max_image_bytes: int = Field(10_000_000, ge=1, description="largest encoded image accepted")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest decoded image accepted (decompression bombs)")
    max_request_pixels: int = Field(
        100_000_000, ge=1, description="most pixels (by their headers) all the images of one request may hold"
    )
    decode_threads: int = Field(
        2, ge=1, description="requests whose images decode at once; each image decodes at about the model's size"
    )
    max_k: int = Field(1000, ge=1, description="most neighbours one request may ask for")
    max_texts_per_request: int = Field(256, ge=1, description="most texts one /embed/text request may send")
    max_text_chars: int = Field(
        100_000, ge=1, description="longest text, class name or template a request may send, in characters: checked "
                                   "before it is tokenised (a model reads at most its context length of tokens anyway)"
    )
    max_vector_dim: int = Field(
        65_536, ge=1, description="most values a vector in a request may hold (a query or an item's); it must also be "
                                  "the index's dimension"
    )
    max_metadata_bytes: int = Field(
        64 * 1024, ge=2, description="largest metadata of one index item, as JSON: it is stored, and served with every hit"
    )
    max_queued_jobs: int = Field(
        16, ge=1, description="jobs waiting to run (all workers together); past it POST /jobs answers 429 with Retry-After"
    )
    max_classes: int = Field(1000, ge=1, description="most classes one /zero-shot request may name")
    max_templates: int = Field(64, ge=1, description="most prompt templates one /zero-shot request may send")
    max_prompts: int = Field(
        4096, ge=1, description="most classes × templates one /zero-shot request may need embedded (each a text-tower row)"
    )
    max_explain_grid: int = Field(
        16, ge=1, description="most patches per side of one /explain occlusion map: a map of grid × grid patches runs "
                              "grid² + 1 images through the model"
    )
    zero_shot_normalization: Literal["querybank", "none"] = Field(
        "querybank", description="/zero-shot default: querybank (subtract each class's query-bank offset, "
                                 "when the model has a bank) or none (plain CLIP cosines)"
    )
    auto_truncate: bool = Field(
        False, description="embed a text longer than the model reads (its context, in tokens) by its first tokens "
                           "instead of answering 422; a request's `truncate` field (/embed/text, /v1/embeddings) "
                           "wins over it, and /zero-shot, /explain and /search by text follow it"
    )
    execution_providers: str = Field(
        "auto", description="onnxruntime providers, comma-separated, or auto (TensorRT, CUDA, CPU as available)"
    )
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto", description="which variant of each model runs: auto = fp16 on a GPU, int8 on CPU when the bundle has it "
                            "within 1 point top-1 of fp32 and export did not time it slower than fp32, else fp32; a "
                            "bundle without the one asked runs fp32"
    )
    onnx_intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime threads per model call; 0: one per physical core, shared among the workers "
                             "when there are several (see runtime.config)"
    )
    triton_url: str | None = Field(None, description="host:port of a Triton server; when set, encoders run there")
    workers: int = Field(
        1, ge=1, description="`embedserve serve` processes; each loads every model and batches on its own (CPU: about one per core)"
    )
    log_level: str = Field("info", description="uvicorn log level")
    data_roots: str = Field(
        "", description="folders (comma-separated) whose images and manifests jobs may read; empty: only "
                        "fashion-mnist:* and index:<name> sources. Anything else, `..` and symlinks out included, is a 403"
    )
    index_keep_previous: int = Field(2, ge=0, description="index versions kept before the current one when a job writes a new one")
    ray_address: str | None = Field(
        None, description="run jobs on Ray Data: local (an in-process Ray), auto (the cluster of this node) or "
                          "ray://host:10001 (Ray Client); unset: jobs run in this process"
    )
    ray_replicas: int = Field(1, ge=1, description="model replicas (Ray actors) a job on Ray embeds with")
    ray_cpus_per_replica: float = Field(1.0, ge=0, description="CPUs each replica reserves on Ray")
    ray_gpus_per_replica: float = Field(0.0, ge=0, description="GPUs each replica reserves on Ray (0: CPU only)")
    ray_ship_bundle: bool = Field(False, description="send the model bundle with each job on Ray instead of reading it "
                                                     "on every worker at the same artifacts path")
    reload_interval_s: float = Field(
        0.0, ge=0, description="look for new `current` model and index versions this often (0: only on POST /admin/reload)"
    )
    api_keys: str = Field("", description="accepted API keys, comma-separated; with any set, requests need "
                                           "`Authorization: Bearer <key>` (all but /healthz, /readyz and the playground page's files)")
    api_keys_file: Path | None = Field(None, description="a file of accepted keys' sha256 hex digests, one per line")
    allow_unauthenticated: bool = Field(False, description="serve a non-loopback address without keys anyway")
    allowed_hosts: str = Field("localhost,127.0.0.1,::1", description="Host header names answered (comma-separated; "
                                                                      "* for any): others get 400, against DNS rebinding")
    cors_origins: str = Field("", description="origins allowed to call from a browser (comma-separated); none by default")
    ready_with_failures: bool = Field(
        False, description="/readyz answers 200 while some models failed to load (they are listed); default 503"
    )
    metrics_public: bool = Field(False, description="serve /metrics without a key")
    job_nice: int = Field(10, ge=0, le=19, description="how much lower than requests a job's threads run (Linux nice)")
    index_backend: Literal["faiss", "milvus"] = Field(
        "faiss", description="where indexes live: faiss (in process, artifacts/indexes) or milvus (a collection per "
                             "version, an alias per name; see milvus_uri)"
    )
    milvus_uri: str = Field("", description="Milvus for index_backend=milvus: a file path runs Milvus Lite embedded; "
                                             "http://host:19530 a Milvus server or cluster; empty: <artifacts_dir>/milvus.db")
    milvus_token: SecretStr | None = Field(None, description="Milvus credentials (user:password or an API key), if it asks for them")
    index_flat_max_count: int = Field(
        FLAT_MAX_COUNT, ge=0, description="a new index with fewer vectors than this is exact (FAISS Flat)"
    )
    index_hnsw_max_count: int = Field(
        HNSW_MAX_COUNT, ge=0, description="below this many vectors (and from index_flat_max_count) HNSW; from here IVF-PQ"
    )

    def batch_tokens(self, providers: list[str] | None) -> int | None:
        """The token budget of a text model's batches (max_batch_tokens; 0 picks by where the model
        runs, `providers`: onnxruntime's, None for a model served elsewhere, e.g. Triton)."""
        if self.max_batch_tokens:
            return self.max_batch_tokens
        return CPU_BATCH_TOKENS if providers == ["CPUExecutionProvider"] else None

    def intra_op_threads(self) -> int:
        """onnxruntime threads per model call: the setting, or for 0 with several workers the cores this
        process may use divided among them (each worker loads its own sessions); 0 otherwise."""
        if self.onnx_intra_op_threads or self.workers == 1:
            return self.onnx_intra_op_threads
        return max(1, len(os.sched_getaffinity(0)) // self.workers)

    def runtime_config(self) -> RuntimeConfig:
        """How the encoders run: the inference core's own config, from these settings."""
        return RuntimeConfig(execution_providers=self.execution_providers, intra_op_threads=self.intra_op_threads(),
                             triton_url=self.triton_url, cache_dir=Path(self.artifacts_dir) / "cache",
                             precision=self.precision)

    def index_config(self) -> IndexConfig:
        """Where indexes live and which FAISS kind each gets: index/'s own config, from these settings."""
        token = self.milvus_token.get_secret_value() if self.milvus_token else None
        return IndexConfig(backend=self.index_backend, milvus_uri=self.milvus_uri, milvus_token=token,
                           flat_max_count=self.index_flat_max_count, hnsw_max_count=self.index_hnsw_max_count)

    def data_root_paths(self) -> tuple[Path, ...]:
        return tuple(Path(p.strip()) for p in self.data_roots.split(",") if p.strip())

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)

    def ray_config(self) -> RayConfig | None:
        """Where jobs run on Ray, or None: in this process."""
        if not self.ray_address:
            return None
        from index.jobs_ray import RayConfig  # its module only where a job may run on Ray

        return RayConfig(address=self.ray_address, replicas=self.ray_replicas, cpus_per_replica=self.ray_cpus_per_replica,
                         gpus_per_replica=self.ray_gpus_per_replica, ship_bundle=self.ray_ship_bundle)


@lru_cache
def get_settings() -> Settings:
    return Settings()
