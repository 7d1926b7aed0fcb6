"""Batch re-embedding jobs on Ray Data: the shards a job lacks are read, preprocessed and embedded
by an actor pool of model replicas on a Ray cluster (or an in-process Ray), and handed back to
jobs.run.run_job, which writes the same Parquet shards, keeps the same status and promotes the
index version the same way as for a job that runs here.

Ray is imported in this module only, and this module only by a job that runs on Ray. The source
as the driver opened it is sent with the job (its listing, so positions agree everywhere; the
pixels of a data set held in memory; an index's item records, whichever backend holds the index),
and each replica reads the items' files itself, so they must be readable at the same paths there
(shared storage). The model bundle is read at the same path too, or, with `ship_bundle`, from a
copy of its files sent with the job through Ray's object store.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from index.batches import Batch, prepare_batch
from jobs.store import JobSpec
from runtime.bundle import Bundle, read_bundle
from runtime.config import RuntimeConfig
from runtime.encoders.factory import load_encoder
from runtime.sources import ImageSource

log = logging.getLogger(__name__)

LOCAL = "local"  # the address that starts an in-process Ray rather than joining a cluster
# What a replica sends back for one shard: its vectors and ids as raw bytes (no tensor types to
# agree on across Ray versions), its metadata and per-item errors as JSON, as the shards keep them.
SHARD_ROW = pa.schema([("number", pa.int64()), ("ids", pa.binary()), ("metadata", pa.string()),
                       ("vectors", pa.binary()), ("errors", pa.string())])


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide a job runs on Ray; the server fills it from EMBEDSERVE_RAY_*, the CLI from --ray*."""

    address: str  # "local": start an in-process Ray; "auto": the cluster this node belongs to; "ray://host:10001": Ray Client
    replicas: int = 1  # model replicas: the size of the actor pool that embeds (Ray Data's concurrency)
    cpus_per_replica: float = 1.0  # CPUs each replica reserves: its onnxruntime threads, unless RuntimeConfig names a count
    gpus_per_replica: float = 0.0  # GPUs each replica reserves (Ray's num_gpus); 0: CPU only
    ship_bundle: bool = False  # send the bundle's files with the job instead of reading it at the same path on every worker

    def __post_init__(self) -> None:
        if not self.address.strip():
            raise ValueError("a Ray address is 'local', 'auto' or ray://host:port")
        if self.replicas < 1 or self.cpus_per_replica < 0 or self.gpus_per_replica < 0:
            raise ValueError(f"{self.replicas} replicas, {self.cpus_per_replica} CPUs and {self.gpus_per_replica} GPUs "
                             "each: at least one replica, no negative resources")


def connect(address: str) -> None:
    """Join Ray at `address` unless this process already has: a server (or a test) keeps one Ray
    for all its jobs, since starting one costs seconds."""
    import ray

    if ray.is_initialized():
        return
    if address == LOCAL:
        ray.init(include_dashboard=False)
    else:
        ray.init(address=address)


def _bundle_files(bundle: Bundle) -> dict[str, bytes]:
    """Every file of the bundle's folder by relative path: what `ship_bundle` sends to the workers."""
    return {p.relative_to(bundle.path).as_posix(): p.read_bytes() for p in sorted(bundle.path.rglob("*")) if p.is_file()}


class _Replica:
    """One model replica, an actor of the pool: the job's encoder, and the source the driver sent."""

    def __init__(self, spec: JobSpec, bundle_path: str, shipped: Any, source: Any, runtime: RuntimeConfig):
        import ray

        if shipped is not None:  # the files sent with the job, written out and checked against the manifest's hashes
            self._copy = tempfile.TemporaryDirectory(prefix="embedserve-bundle-")  # removed with the actor
            folder = Path(self._copy.name) / Path(bundle_path).name
            for name, data in ray.get(shipped).items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
            bundle = read_bundle(folder, verify=True)
        else:
            bundle = read_bundle(Path(bundle_path))
        self.preprocessing, self.dim, self.size = bundle.manifest.preprocessing, bundle.manifest.dim, spec.batch_size
        self.encoder = load_encoder(bundle, runtime, role="image_encoder")
        self.source: ImageSource = ray.get(source)

    def __call__(self, shards: pa.Table) -> pa.Table:
        rows = []
        for number in shards.column("number").to_pylist():
            batch = prepare_batch(self.source, self.preprocessing, number, self.size)
            vectors = self.encoder.encode(batch.inputs) if len(batch.ids) else np.empty((0, self.dim), np.float32)
            rows.append({"number": number, "ids": np.ascontiguousarray(batch.ids, np.int64).tobytes(),
                         "metadata": json.dumps(batch.metadata, ensure_ascii=False),
                         "vectors": np.ascontiguousarray(vectors, np.float32).tobytes(),  # (n, D)
                         "errors": json.dumps({str(p): e for p, e in batch.errors.items()}, ensure_ascii=False)})
        return pa.Table.from_pylist(rows, schema=SHARD_ROW)


def _batch_from_row(row: dict[str, Any], dim: int) -> tuple[Batch, np.ndarray]:
    ids = np.frombuffer(row["ids"], np.int64)
    vectors = np.frombuffer(row["vectors"], np.float32).reshape(len(ids), dim)  # (n, D)
    errors = {int(p): e for p, e in json.loads(row["errors"]).items()}
    return Batch(int(row["number"]), ids, json.loads(row["metadata"]), np.empty(0, np.float32), errors), vectors


def _last_line(text: str) -> str:
    """What a worker's traceback ends with (the exception and its message), without its colours."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


def replica_runtime(runtime: RuntimeConfig, config: RayConfig) -> RuntimeConfig:
    """How a replica runs its encoder: `runtime`, with its threads per call (0: one per core of
    the node) made the CPUs the replica reserves, so that replicas sharing a node do not each
    start a thread for every core of it."""
    if runtime.intra_op_threads:
        return runtime
    return replace(runtime, intra_op_threads=max(1, round(config.cpus_per_replica)))


def embed_on_ray(config: RayConfig, spec: JobSpec, todo: list[int], bundle: Bundle, source: ImageSource,
                 runtime: RuntimeConfig) -> Iterator[tuple[Batch, np.ndarray]]:
    """(batch, vectors (n, D)) of each shard number in `todo`, in the order the replicas finish
    them: a Ray Data pipeline of the shard numbers, one block each, through `map_batches` with an
    actor pool of `config.replicas` replicas. Closing the iterator (a cancel, a stop) ends the
    pipeline: the shards not yet handed back are dropped, the ones written are kept for a resume."""
    if not todo:
        return
    import ray
    import ray.data

    connect(config.address)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the job's status (and the CLI's bar) says how far it is
    shipped = ray.put(_bundle_files(bundle)) if config.ship_bundle else None
    sent = ray.put(source)  # once, for every replica: its read functions pickled with what they hold
    shards = ray.data.from_items([{"number": n} for n in todo], override_num_blocks=len(todo))
    embedded = shards.map_batches(
        _Replica, batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=config.replicas),
        num_cpus=config.cpus_per_replica, **({"num_gpus": config.gpus_per_replica} if config.gpus_per_replica else {}),
        fn_constructor_kwargs={"spec": spec, "bundle_path": str(bundle.path), "shipped": shipped, "source": sent,
                               "runtime": replica_runtime(runtime, config)})
    rows = embedded.iter_rows()
    try:
        for row in rows:
            yield _batch_from_row(row, bundle.manifest.dim)
    except ray.exceptions.RayError as e:  # a replica that could not start or embed: the job fails with the reason
        log.warning("the Ray Data pipeline of a job failed: %s", e)  # the workers' traceback, for whoever runs the cluster
        raise RuntimeError(f"the job's Ray Data pipeline failed: {_last_line(str(e))}") from e
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()
