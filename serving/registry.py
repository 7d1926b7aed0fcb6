"""The registry: every model and index the server holds, loaded once at start-up.

`Registry.load` reads each model's current bundle under `artifacts/models/` and builds the
object that serves it: word vectors get a FAISS index (index/word_vectors.py); image encoders
get an `Encoder` (serving.encoders.factory) fed by a `MicroBatcher`. It also loads the current
version of every index under `artifacts/indexes/`, and the exact model version each index was
built with when that is not the current one. Routers ask the registry for a model or index by
name, or for the default of its kind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from export.bundle import Bundle, Manifest, iter_current_bundles, open_bundle
from index.vector_index import VectorIndex, iter_current_indexes
from index.word_vectors import WordVectors
from serving.batching import MicroBatcher
from serving.encoders.base import Encoder
from serving.encoders.factory import load_encoder
from serving.errors import UnknownIndex, UnknownModel
from serving.metrics import Metrics
from serving.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Registry:
    settings: Settings
    words: dict[str, WordVectors] = field(default_factory=dict)  # word-vectors models by name
    encoders: dict[str, Encoder] = field(default_factory=dict)  # image/text encoders by name
    manifests: dict[str, Manifest] = field(default_factory=dict)  # every loaded model's manifest
    # image encoders' batchers by (name, version): current versions, plus older ones an index needs
    image_batchers: dict[tuple[str, str], MicroBatcher] = field(default_factory=dict)
    image_manifests: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    indexes: dict[str, VectorIndex] = field(default_factory=dict)  # current version of each index, by name
    metrics: Metrics | None = None  # where batchers record their batch sizes

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics | None = None) -> Registry:
        registry = cls(settings, metrics=metrics)
        for bundle in iter_current_bundles(settings.artifacts_dir):
            try:
                registry.add(bundle)
            except Exception:  # one broken model must not keep the others from serving
                log.exception("could not load model %s from %s", bundle.manifest.name, bundle.path)
        for index in iter_current_indexes(settings.artifacts_dir):
            registry.add_index(index)
        log.info("loaded models: %s", ", ".join(sorted(registry.manifests)) or "none")
        log.info("loaded indexes: %s", ", ".join(sorted(registry.indexes)) or "none")
        return registry

    def add(self, bundle: Bundle) -> None:
        manifest = bundle.manifest
        if manifest.kind == "word-vectors":
            self.words[manifest.name] = WordVectors.from_bundle(bundle)
        elif manifest.kind == "image-encoder":
            self._add_image_encoder(bundle)
        else:
            log.warning("model %s: kind %r is not served yet; skipped", manifest.name, manifest.kind)
            return
        self.manifests[manifest.name] = manifest

    def _add_image_encoder(self, bundle: Bundle) -> None:
        manifest, settings = bundle.manifest, self.settings
        encoder = load_encoder(bundle, settings)
        key = (manifest.name, manifest.version)
        self.encoders.setdefault(manifest.name, encoder)  # the current version, which load adds first
        self.image_manifests[key] = manifest
        self.image_batchers[key] = MicroBatcher(
            encoder,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            enabled=settings.batching,
            on_batch=self.metrics.batch_size.labels(manifest.name).observe if self.metrics else None,
        )

    def add_index(self, index: VectorIndex) -> None:
        """Serve `index`; load the model version it was built with if that is not loaded yet."""
        name = index.manifest.name
        self.indexes[name] = index
        key = (index.model, index.model_version)
        if index.model is None or key in self.image_batchers:
            return
        try:
            bundle = open_bundle(self.settings.artifacts_dir, index.model, index.model_version)
            if bundle.manifest.kind == "image-encoder":
                self._add_image_encoder(bundle)
        except Exception as e:  # the index still serves vector and id queries
            log.warning("index %s: cannot load its model %s %s (%s); image queries will fail", name, *key, e)

    def image_model(self, name: str | None, version: str | None = None) -> tuple[Manifest, MicroBatcher]:
        """The image encoder `name` (current version unless `version`), or the default one."""
        current = {n: v for n, v in self.image_batchers if self.manifests.get(n) and self.manifests[n].version == v}
        name = name or self.settings.default_image_model or next(iter(sorted(current)), None)
        key = (name, version or current.get(name))
        if key not in self.image_batchers:
            known = ", ".join(sorted(current)) or "none loaded"
            wanted = f"{name!r}" + (f" version {version!r}" if version else "")
            raise UnknownModel(f"no image encoder named {wanted}; available: {known}")
        return self.image_manifests[key], self.image_batchers[key]

    def index(self, name: str | None) -> VectorIndex:
        """The index `name`, or the default one (the setting, else the only one loaded)."""
        known = ", ".join(sorted(self.indexes)) or "none loaded"
        name = name or self.settings.default_index or (next(iter(self.indexes)) if len(self.indexes) == 1 else None)
        if name is None:
            raise UnknownIndex(f"name the index to search (several or none are loaded); available: {known}")
        if name not in self.indexes:
            raise UnknownIndex(f"no index named {name!r}; available: {known}")
        return self.indexes[name]

    async def start(self) -> None:
        for batcher in self.image_batchers.values():
            await batcher.start()

    async def stop(self) -> None:
        for batcher in self.image_batchers.values():
            await batcher.stop()

    @property
    def ready(self) -> bool:
        return bool(self.manifests)

    def word_model(self, name: str | None) -> tuple[Manifest, WordVectors]:
        """The word-vectors model `name`, or the default one (the setting, else the only/first)."""
        name = name or self.settings.default_word_model or next(iter(sorted(self.words)), None)
        if name is None or name not in self.words:
            known = ", ".join(sorted(self.words)) or "none loaded"
            raise UnknownModel(f"no word-vectors model named {name!r}; available: {known}")
        return self.manifests[name], self.words[name]

    def close(self) -> None:
        for batcher in self.image_batchers.values():
            batcher.encoder.close()
        for encoder in self.encoders.values():
            encoder.close()
