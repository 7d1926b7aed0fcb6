"""Build an image index: embed every image of a source with a model's current bundle and save it
as the index's next version, in whichever store the settings name (FAISS files or Milvus). Images go through the inference core the server uses (runtime.sources,
runtime.preprocessing, runtime.encoders), so an indexed image and the same file sent to /search
embed identically. Torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.store import FaissStore, IndexStore, writing
from runtime.bundle import BundleError, open_bundle
from runtime.config import RuntimeConfig
from runtime.encoders.factory import load_encoder
from runtime.preprocessing import ImageLimits, preprocess_batch
from runtime.sources import open_source

log = logging.getLogger(__name__)


def _batches(count: int, batch_size: int) -> Iterator[range]:
    for start in range(0, count, batch_size):
        yield range(start, min(start + batch_size, count))


def build_image_index(
    artifacts_dir: Path,
    index_name: str,
    model_name: str,
    source: str | Path,
    batch_size: int = 256,
    limit: int | None = None,
    progress: bool = True,
    kind: str | None = None,
    runtime: RuntimeConfig = RuntimeConfig(),
    limits: ImageLimits = ImageLimits(),
    indexes: IndexStore | None = None,
) -> str:
    """Embed the first `limit` (default all) images of `source` with `model_name`'s current bundle
    and save them as index `index_name` in `indexes` (FAISS files under `artifacts_dir` when None);
    ids are positions in the source. Returns the version written, now the current one."""
    if batch_size < 1 or (limit is not None and limit < 1):
        raise ValueError(f"batch_size ({batch_size}) and limit ({limit}) must be at least 1")
    bundle = open_bundle(artifacts_dir, model_name)
    manifest = bundle.manifest
    if manifest.kind not in ("image-encoder", "image-text-encoder") or manifest.preprocessing is None:
        raise BundleError(
            f"model {model_name!r} is a {manifest.kind} bundle; an image index needs an image encoder "
            "(image-encoder or a CLIP image-text-encoder) with preprocessing"
        )
    images = open_source(source, limits)
    count = images.count if limit is None else min(limit, images.count)
    encoder = load_encoder(bundle, runtime, role="image_encoder")  # a CLIP bundle's image tower
    vectors = np.empty((count, manifest.dim), dtype=np.float32)  # (N, D)
    try:
        with tqdm(total=count, desc=f"embedding {images.description}", unit="img", disable=not progress) as bar:
            for positions in _batches(count, batch_size):
                batch = preprocess_batch([images.read(p) for p in positions], manifest.preprocessing)  # (B, C, H, W)
                vectors[positions.start : positions.stop] = encoder.encode(batch)  # (B, D)
                bar.update(len(positions))
    finally:
        encoder.close()
    indexes = indexes or FaissStore(artifacts_dir)
    index = indexes.build(
        index_name,
        np.arange(count, dtype=np.int64),
        vectors,  # normalised by the index
        [images.metadata(p) for p in range(count)],
        kind=kind,
        model=manifest.name,
        model_version=manifest.version,
    )
    # the precision the vectors were embedded at, so a server querying at another one can say so
    with writing(artifacts_dir, index_name):  # a server's item writes wait, then apply to this version
        version = indexes.save(index, index_name,
                               extra={"source": images.description, "limit": limit, "precision": encoder.precision})
    log.info("index %s %s: %d vectors of model %s %s", index_name, version, count, manifest.name, manifest.version)
    return version
