"""The registry: every model and index the server holds, loaded once at start-up.

`Registry.load` reads each model's current bundle under `artifacts/models/` and builds the
object that serves it: word vectors get a FAISS index (index/word_vectors.py). Routers ask
the registry for a model by name, or for the default of its kind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from export.bundle import Bundle, Manifest, iter_current_bundles
from index.word_vectors import WordVectors
from serving.encoders.base import Encoder
from serving.errors import UnknownModel
from serving.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Registry:
    settings: Settings
    words: dict[str, WordVectors] = field(default_factory=dict)  # word-vectors models by name
    encoders: dict[str, Encoder] = field(default_factory=dict)  # image/text encoders by name
    manifests: dict[str, Manifest] = field(default_factory=dict)  # every loaded model's manifest

    @classmethod
    def load(cls, settings: Settings) -> Registry:
        registry = cls(settings)
        for bundle in iter_current_bundles(settings.artifacts_dir):
            try:
                registry.add(bundle)
            except Exception:  # one broken model must not keep the others from serving
                log.exception("could not load model %s from %s", bundle.manifest.name, bundle.path)
        log.info("loaded models: %s", ", ".join(sorted(registry.manifests)) or "none")
        return registry

    def add(self, bundle: Bundle) -> None:
        manifest = bundle.manifest
        if manifest.kind == "word-vectors":
            self.words[manifest.name] = WordVectors.from_bundle(bundle)
        else:
            log.warning("model %s: kind %r is not served yet; skipped", manifest.name, manifest.kind)
            return
        self.manifests[manifest.name] = manifest

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
        for encoder in self.encoders.values():
            encoder.close()
