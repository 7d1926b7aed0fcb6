"""Build an image index: embed every image of a source with a model's current bundle and save it
as the index's next version, in whichever store the settings name (FAISS files or Milvus). Images
go through the inference core the server uses (runtime.sources, runtime.preprocessing,
runtime.encoders), so an indexed image and the same file sent to /search embed identically; one
that cannot be read is skipped and counted, as jobs do. Torch-free.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.batches import prepare_batch
from index.store import FaissStore, IndexStore, writing
from runtime.bundle import BundleError, open_bundle
from runtime.config import RuntimeConfig
from runtime.encoders.factory import load_encoder
from runtime.preprocessing import ImageLimits
from runtime.sources import Roots, SourceError, open_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltIndex:
    """What a build wrote, and what it left out."""

    version: str  # the index version written, now the current one
    indexed: int  # images embedded into it
    skipped: dict[int, str]  # source position -> why its image could not be read (corrupt, over a limit, forbidden)


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
    roots: Roots = None,
) -> BuiltIndex:
    """Embed the first `limit` (default all) images of `source` with `model_name`'s current bundle
    and save them as index `index_name` in `indexes` (FAISS files under `artifacts_dir` when None);
    ids are positions in the source, read only under `roots` when given (runtime.sources.confine).
    An image that cannot be read (corrupt, over `limits`, outside the data roots) is skipped and
    counted, as a job does (index.batches.prepare_batch reads both);
    a source none of whose images can be read is a SourceError."""
    if batch_size < 1 or (limit is not None and limit < 1):
        raise ValueError(f"batch_size ({batch_size}) and limit ({limit}) must be at least 1")
    bundle = open_bundle(artifacts_dir, model_name)
    manifest = bundle.manifest
    if manifest.kind not in ("image-encoder", "image-text-encoder") or manifest.preprocessing is None:
        raise BundleError(
            f"model {model_name!r} is a {manifest.kind} bundle; an image index needs an image encoder "
            "(image-encoder or a CLIP image-text-encoder) with preprocessing"
        )
    images = open_source(source, limits, roots)
    images = replace(images, count=images.count if limit is None else min(limit, images.count))
    encoder = load_encoder(bundle, runtime, role="image_encoder")  # a CLIP bundle's image tower
    ids, vectors, metadata, skipped = [], [], [], {}
    try:
        with tqdm(total=images.count, desc=f"embedding {images.description}", unit="img", disable=not progress) as bar:
            for number in range(math.ceil(images.count / batch_size)):
                batch = prepare_batch(images, manifest.preprocessing, number, batch_size)  # inputs (n, C, H, W)
                if len(batch.ids):
                    vectors.append(encoder.encode(batch.inputs))  # (n, D)
                    ids.append(batch.ids)
                    metadata += batch.metadata
                skipped.update(batch.errors)
                bar.update(len(batch.ids) + len(batch.errors))
    finally:
        encoder.close()
    if not ids:
        first = next(iter(skipped.values()), "the source is empty")
        raise SourceError(f"no image of {images.description} could be read ({len(skipped)} skipped; the first: {first})")
    indexes = indexes or FaissStore(artifacts_dir)
    index = indexes.build(
        index_name,
        np.concatenate(ids).astype(np.int64),
        np.concatenate(vectors),  # (N, D), normalised by the index
        metadata,
        kind=kind,
        model=manifest.name,
        model_version=manifest.version,
    )
    # the precision the vectors were embedded at, so a server querying at another one can say so
    with writing(artifacts_dir, index_name):  # a server's item writes wait, then apply to this version
        version = indexes.save(index, index_name, extra={"source": images.description, "limit": limit,
                                                         "precision": encoder.precision, "skipped": len(skipped)})
    log.info("index %s %s: %d vectors of model %s %s, %d images skipped", index_name, version, len(metadata),
             manifest.name, manifest.version, len(skipped))
    return BuiltIndex(version, len(metadata), skipped)
