"""The registry: every model and index the server holds, loaded once at start-up.

`Registry.load` reads each model's current bundle under `artifacts/models/` and builds the
object that serves it: word vectors get a FAISS index (index/word_vectors.py); image encoders
get an `Encoder` (runtime.encoders.factory) fed by a `MicroBatcher`; a CLIP bundle
(image-text-encoder) gets two, an image side that /embed/image and /search use like any image
encoder and a text side with the tokenizer it was trained with and, when exported with one, the
query bank /zero-shot normalises with; a text encoder (a sentence-transformers model imported by
export.sentence_transformers) gets a text side only, which /embed/text and /v1/embeddings serve
like a CLIP model's and /zero-shot refuses, having no image tower to classify with. It also loads the current version of every index under
`artifacts/indexes/` (or in Milvus: `registry.index_store`, index/store.py), and the exact model version each index was built with when that is not
the current one. Routers ask the registry for a model (`image_model`, `text_model`, `word_model`)
or an index (`index`, `indexes`: always the current version) by name, or for the default of its
kind; writes to an index go through `write_index`.

What it serves can change while the server runs: `reload` loads whatever `current` pointers
changed (new model versions, new index versions) and `publish` serves an index a job just
wrote. A new index is published only after the model version it was built with is loaded, and a
request takes the index once and embeds its query with that index's own model version, so no
query is ever embedded by one version and searched against vectors of another. Versions nothing
points at any more are retired: taken out of the tables at once, and their batchers stopped and
sessions closed after a grace period, once the requests that already hold them are done. Tables
are changed under one lock and read through snapshots, so a reload in a worker thread never
breaks a request on the event loop.

Several processes may serve one artifacts folder (`embedserve serve --workers N`, or a CLI beside
a server). Each request for an index checks its `current` pointer (one `stat`) and loads a version
another process made current before it answers, so a change acknowledged by one worker shows in
the next search on any. Writes take the index's write lock (index.store.writing) and apply the
change to the current version on disk, never to a copy another writer has replaced.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from tokenizers import Tokenizer

from index.store import IndexStore, SearchIndex, open_index_store, writing
from index.word_vectors import WordVectors
from index.class_matrix import ClassMatrixCache, QueryBank, read_query_bank
from runtime.bundle import Bundle, BundleError, Manifest, iter_current_bundles, models_dir, open_bundle, read_bundle
from runtime.encoders.base import Encoder
from runtime.encoders.factory import load_encoder
from runtime.files import atomic_write_text, check_name, file_stamp, names_under, version_folder
from runtime.tokens import load_tokenizer, text_encoder_batch
from serving.batching import MicroBatcher
from serving.decoding import ImageDecoder
from serving.errors import Conflict, InvalidInput, NotReady, UnknownIndex, UnknownModel
from serving.metrics import Metrics
from serving.settings import Settings

log = logging.getLogger(__name__)

# Under the artifacts folder: the worker that answers POST /admin/reload rewrites it, and the
# others reload when they see it change (serving.app), so a reload reaches every worker.
RELOAD_MARKER = ".reload"


@dataclass(frozen=True)
class WordModel:
    """A word-vectors model: what /similar and /analogy need."""

    manifest: Manifest
    vectors: WordVectors  # its vocabulary and a FAISS index over its unit vectors


@dataclass(frozen=True)
class ImageModel:
    """An image encoder, or a CLIP bundle's image side: what /embed/image, /zero-shot and image search need."""

    manifest: Manifest
    batcher: MicroBatcher  # feeds the image encoder (B, C, H, W) float32, preprocessed as the manifest says


@dataclass(frozen=True)
class TextModel:
    """The text side of a CLIP bundle or a text encoder: what /embed/text, /zero-shot and text search need."""

    manifest: Manifest
    batcher: MicroBatcher  # feeds the text encoder (B, 2, T) int64: token ids and attention mask stacked
    tokenizer: Tokenizer  # the bundle's tokenizer.json: truncation and padding as in training
    query_bank: QueryBank | None = None  # training images' embeddings for zero-shot normalisation; None if not exported

    @property
    def context_length(self) -> int:
        return self.manifest.tokenizer.context_length


@dataclass
class Registry:
    settings: Settings
    words: dict[str, WordVectors] = field(default_factory=dict)  # word-vectors models by name
    manifests: dict[str, Manifest] = field(default_factory=dict)  # every loaded model's manifest
    # image sides by (name, version): current versions, plus older ones an index needs
    image_models: dict[tuple[str, str], ImageModel] = field(default_factory=dict)
    # text sides by (name, version): CLIP models' (loaded alongside their image side) and text encoders'
    text_models: dict[tuple[str, str], TextModel] = field(default_factory=dict)
    class_matrices: ClassMatrixCache = field(default_factory=ClassMatrixCache)  # zero-shot class embeddings
    _indexes: dict[str, SearchIndex] = field(default_factory=dict, repr=False)  # the served version of each index, by name
    metrics: Metrics | None = None  # where batchers record their batch sizes
    failed: dict[str, str] = field(default_factory=dict)  # models refused at load: name -> why
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one change of the tables at a time
    _refreshing: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one index load at a time
    _index_stamps: dict[str, Hashable | None] = field(default_factory=dict, repr=False)  # the pointer each served index was read at
    _reload_seen: Hashable | None = field(default=None, repr=False)  # the reload marker as this process last saw it
    images: ImageDecoder = field(init=False, repr=False)  # how every route decodes request images
    index_store: IndexStore = field(init=False, repr=False)  # where index versions are kept: FAISS folders or Milvus

    def __post_init__(self) -> None:
        s = self.settings
        self.images = ImageDecoder(s.image_limits(), s.max_request_pixels, s.decode_threads)
        self.index_store = open_index_store(s.artifacts_dir, s.index_config())
        self._reload_seen = file_stamp(s.artifacts_dir / RELOAD_MARKER)

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics | None = None) -> Registry:
        """Every model's current bundle, each verified (every file against its sha256) and probed
        once with a known input; a model that fails is refused, recorded with the reason in
        `failed`, and the others serve. Then every index."""
        registry = cls(settings, metrics=metrics)
        root = models_dir(settings.artifacts_dir)
        for name in names_under(root):
            try:
                bundle = read_bundle(version_folder(root, name, what="model"), verify=True)
                registry.add(bundle)
            except Exception as e:  # one broken model must not keep the others from serving
                log.error("model %s is not served: %s", name, e)
                registry.failed[name] = f"{type(e).__name__}: {e}"
        for name in registry.index_store.names():
            try:
                registry._refresh(name)
            except Exception as e:  # one broken index must not keep the others from serving
                log.warning("index %s is not served: %s", name, e)
        log.info("loaded models: %s", ", ".join(sorted(registry.manifests)) or "none")
        log.info("loaded indexes: %s", ", ".join(sorted(registry._indexes)) or "none")
        return registry

    def add(self, bundle: Bundle) -> None:
        """Serve `bundle` as the current version of its model."""
        with self._lock:
            if self._load(bundle):
                self.manifests[bundle.manifest.name] = bundle.manifest
                self.failed.pop(bundle.manifest.name, None)

    def _load(self, bundle: Bundle) -> bool:
        """Build what serves `bundle`, by its kind; False (and a warning) for a kind not served. Its
        manifest must name the folder it was read from: a manifest is data, and the name and version
        it holds are what requests and indexes will ask for."""
        manifest = bundle.manifest
        if (manifest.name, manifest.version) != (bundle.path.parent.name, bundle.path.name):
            raise BundleError(f"the manifest in {bundle.path} names model {manifest.name[:80]!r} version "
                              f"{manifest.version[:80]!r}, not its folder's; re-export it")
        if manifest.kind == "word-vectors":
            self.words[manifest.name] = WordVectors.from_bundle(bundle)
        elif manifest.kind == "image-encoder":
            self._add_image_encoder(bundle)
        elif manifest.kind == "image-text-encoder":
            self._add_image_text_encoder(bundle)
        elif manifest.kind == "text-encoder":
            self._add_text_encoder(bundle)
        else:
            log.warning("model %s: kind %r is not served yet; skipped", manifest.name, manifest.kind)
            return False
        return True

    def _batcher(self, encoder: Encoder, metrics_label: str) -> MicroBatcher:
        settings = self.settings
        batcher = MicroBatcher(
            encoder,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            enabled=settings.batching,
            on_batch=self.metrics.batch_size.labels(metrics_label).observe if self.metrics else None,
            max_queue_rows=settings.max_queue,
            max_batch_tokens=settings.batch_tokens(encoder.providers),
            batches_in_flight=settings.batches_in_flight,
        )
        if self.metrics:
            self.metrics.queued.labels(metrics_label).set_function(lambda: batcher.waiting_rows)
        return batcher

    def _add_image_encoder(self, bundle: Bundle, role: str | None = None) -> None:
        manifest = bundle.manifest
        encoder = load_encoder(bundle, self.settings.runtime_config(), role)
        if manifest.preprocessing is not None:
            _probe(encoder, np.ones((1, *manifest.preprocessing.input_shape), np.float32))  # a plain, non-zero input
        self.image_models[(manifest.name, manifest.version)] = ImageModel(manifest, self._batcher(encoder, manifest.name))

    def _text_model(self, bundle: Bundle, query_bank: QueryBank | None = None, metrics_label: str | None = None) -> TextModel:
        """The text side of a bundle (its `text_encoder` model and tokenizer), probed, with its own batcher."""
        manifest = bundle.manifest
        if manifest.tokenizer is None:
            raise ValueError(f"model {manifest.name}: its manifest names no tokenizer file; re-export the bundle")
        tokenizer = load_tokenizer(bundle.path / manifest.tokenizer.file)
        text_encoder = load_encoder(bundle, self.settings.runtime_config(), "text_encoder")
        _probe(text_encoder, text_encoder_batch(tokenizer, ["a probe"]))
        return TextModel(manifest, self._batcher(text_encoder, metrics_label or manifest.name), tokenizer, query_bank)

    def _add_text_encoder(self, bundle: Bundle) -> None:
        manifest = bundle.manifest
        self.text_models[(manifest.name, manifest.version)] = self._text_model(bundle)

    def _add_image_text_encoder(self, bundle: Bundle) -> None:
        """Both towers of a CLIP bundle, each with its own batcher, and its query bank if it has one;
        the image side serves like any image encoder."""
        manifest = bundle.manifest
        query_bank = read_query_bank(bundle)
        if query_bank is None:
            log.info("model %s %s has no query bank: /zero-shot serves it without normalisation", manifest.name, manifest.version)
        # metrics label "<name>:text": image and text batches of one model are different workloads
        text_model = self._text_model(bundle, query_bank, f"{manifest.name}:text")
        self._add_image_encoder(bundle, "image_encoder")
        self.text_models[(manifest.name, manifest.version)] = text_model

    async def index(self, name: str | None) -> SearchIndex:
        """The index `name`, or the default one (the setting, else the only one loaded), at its
        current version: loaded first if another process made a newer one current since this one
        read it. A version that cannot be read is logged and the served one kept."""
        wanted = self._index_name(name)
        if wanted is not None:
            check_name(wanted, "index name")  # a 422 before the name touches a file
        if wanted is not None and self._changed(wanted):
            retire_later(await asyncio.to_thread(self._refresh_or_keep, wanted))
        return self._served(name)

    async def indexes(self) -> dict[str, SearchIndex]:
        """Every index by name, each at its current version (see `index`), including ones another
        process created."""
        changed = [n for n in self.index_store.names() if self._changed(n)]
        if changed:
            retire_later(await asyncio.to_thread(lambda: [b for n in changed for b in self._refresh_or_keep(n)]))
        return dict(self._indexes)

    def write_index(self, name: str, prepared_on: SearchIndex, change: Callable[[SearchIndex], None]) -> tuple[SearchIndex, str]:
        """Apply `change(index)` to index `name`'s current version and save the result as its next
        version, under the index's write lock, which every process that writes it takes. So a change
        is never applied to a version another worker has replaced (losing that one's change). A
        request prepared (its vectors embedded) on `prepared_on` is refused with a 409 when the
        current version holds another model version's vectors. Returns the index and its new
        version; run it off the event loop."""
        with writing(self.settings.artifacts_dir, name):
            self._refresh(name)
            index = self._served(name)
            if (index.model, index.model_version, index.dim) != (prepared_on.model, prepared_on.model_version, prepared_on.dim):
                raise Conflict(f"index {name!r} is now version {index.manifest.version}, of model {index.model} "
                               f"{index.model_version}: this request was embedded for {prepared_on.model_version}; send it again")
            change(index)
            version = self.index_store.save(index, name, extra=index.manifest.extra if index.manifest else None)
            self._index_stamps[name] = self.index_store.stamp(name)
            self.index_store.prune(name, self.settings.index_keep_previous)
            return index, version

    def publish(self, index: SearchIndex) -> None:
        """Serve a version this process has just saved and made current, while it holds the index's
        write lock (a job's): the pointer read now is the one it wrote."""
        self._add_index(index, self.index_store.stamp(index.manifest.name))

    def _served(self, name: str | None) -> SearchIndex:
        """The version of index `name` (or the default) this process serves now, without a look at its pointer."""
        known = ", ".join(sorted(self._indexes)) or "none loaded"
        name = self._index_name(name)
        if name is None:
            raise UnknownIndex(f"name the index to search (several or none are loaded); available: {known}")
        if name not in self._indexes:
            raise UnknownIndex(f"no index named {name!r}; available: {known}")
        return self._indexes[name]

    def _index_name(self, name: str | None) -> str | None:
        """The index a request means: `name`, else the setting's default, else the only one loaded."""
        return name or self.settings.default_index or (next(iter(self._indexes)) if len(self._indexes) == 1 else None)

    def _changed(self, name: str) -> bool:
        """Whether index `name`'s `current` pointer moved since the served version was read (another
        worker, a job or the CLI saved a newer one), or it appeared; one `stat`, for every request."""
        stamp = self.index_store.stamp(name)
        return stamp is not None and stamp != self._index_stamps.get(name)

    def _refresh(self, name: str) -> bool:
        """Serve index `name`'s current version if it is not the one served; True if that changed.
        Slow (a FAISS file, maybe a model version): run it off the event loop."""
        with self._refreshing:
            stamp = self.index_store.stamp(name)  # before reading the version: a move after it is seen next time
            served = self._indexes.get(name)
            if served is not None and stamp is not None and stamp == self._index_stamps.get(name):
                return False
            version = self.index_store.current_version(name)
            if served is not None and served.manifest.version == version:
                self._index_stamps[name] = stamp
                return False
            index = self.index_store.open(name, version)
            if index.manifest.name != name:  # served under the name asked for, or not at all
                raise BundleError(f"index {name!r} version {version}: its manifest names it {index.manifest.name[:80]!r}")
            self._add_index(index, stamp)
            log.info("now serving index %s %s", name, version)
            return True

    def _refresh_or_keep(self, name: str) -> list[MicroBatcher]:
        try:
            self._refresh(name)
        except Exception as e:  # a broken or vanished version: keep serving the last good one
            log.warning("index %s: its current version cannot be loaded (%s); still serving %s", name, e,
                        self._indexes[name].manifest.version if name in self._indexes else "none")
            self._index_stamps[name] = self.index_store.stamp(name)  # once per change, not at every request
        return self.unused_batchers()

    def _add_index(self, index: SearchIndex, stamp: Hashable | None = None) -> None:
        """Serve `index` under its name: first load the model version it was built with, if that
        is not loaded yet, then publish it (a dict assignment: a request sees the old or the new).
        `stamp` is its `current` pointer's as it was read (IndexStore.stamp); without one, the next
        request for it reads the pointer again."""
        name = index.manifest.name
        key = (index.model, index.model_version)
        with self._lock:
            if index.model is not None and key not in self.image_models:
                try:
                    self._load(open_bundle(self.settings.artifacts_dir, index.model, index.model_version))
                except Exception as e:  # the index still serves vector and id queries
                    log.warning("index %s: cannot load its model %s %s (%s); image and text queries will fail", name, *key, e)
            image_model = self.image_models.get(key)
            built_at, queried_at = index_precision(index), image_model.batcher.encoder.precision if image_model else None
            if built_at and queried_at and built_at != queried_at:
                log.warning("index %s was embedded at %s but its image queries run at %s (EMBEDSERVE_PRECISION): "
                            "cosines shift slightly; rebuild it, or serve at %s", name, built_at, queried_at, built_at)
            self._indexes[name] = index
            self._index_stamps[name] = stamp

    def reload(self) -> tuple[list[str], list[MicroBatcher]]:
        """Load every model and index whose `current` version changed on disk. Returns what changed
        ("name version" lines) and the batchers no longer served, which `retire` stops once their
        requests are done. Slow (sessions, FAISS files): run it off the event loop."""
        changed = []
        artifacts = self.settings.artifacts_dir
        for bundle in iter_current_bundles(artifacts):
            loaded = self.manifests.get(bundle.manifest.name)
            if loaded is None or loaded.version != bundle.manifest.version:
                try:
                    self.add(read_bundle(bundle.path, verify=True))  # hashed and probed, as at start-up
                    changed.append(f"model {bundle.manifest.name} {bundle.manifest.version}")
                except Exception as e:
                    log.exception("reload: could not load model %s from %s", bundle.manifest.name, bundle.path)
                    if loaded is None:  # a model served before keeps serving its old version
                        self.failed[bundle.manifest.name] = f"{type(e).__name__}: {e}"
        for name in self.index_store.names():
            try:
                if self._refresh(name):
                    changed.append(f"index {name} {self._indexes[name].manifest.version}")
            except Exception as e:
                log.warning("reload: skipping index %s: %s", name, e)
        return changed, self.unused_batchers()

    def announce_reload(self) -> None:
        """Tell the other workers on this artifacts folder to reload too (this one just did)."""
        marker = self.settings.artifacts_dir / RELOAD_MARKER
        try:
            atomic_write_text(marker, f"{time.time():.6f} {os.getpid()}\n")
        except OSError as e:  # a read-only artifacts folder: one worker is the usual case there
            log.warning("cannot write %s (%s): other workers of this folder reload at their next poll only", marker, e)
            return
        self._reload_seen = file_stamp(marker)

    def reload_requested(self) -> bool:
        """Whether another worker announced a reload since this one last looked (one `stat`)."""
        seen = file_stamp(self.settings.artifacts_dir / RELOAD_MARKER)
        if seen == self._reload_seen:
            return False
        self._reload_seen = seen
        return True

    def unused_batchers(self) -> list[MicroBatcher]:
        """Take out of the tables the model versions that are neither current nor used by an index."""
        with self._lock:
            wanted = {(n, m.version) for n, m in self.manifests.items()}
            wanted |= {(i.model, i.model_version) for i in self._indexes.values() if i.model is not None}
            unused = []
            for table in (self.image_models, self.text_models):
                for key in [k for k in table if k not in wanted]:
                    unused.append(table.pop(key).batcher)
            return unused

    def _resolve(self, table: dict[tuple[str, str], object], name: str | None, default: str | None,
                 version: str | None) -> tuple[tuple[str | None, str | None], str]:
        """The (name, version) key of `table` a request means: `name`, else `default`, else the
        first loaded by name; `version`, else that model's current one. Also the loaded names, for
        the error message when the key is not in `table`."""
        _check_model_name(name, version)
        manifests = dict(self.manifests)  # snapshots: a reload may change the tables meanwhile
        current = {n: v for n, v in list(table) if n in manifests and manifests[n].version == v}
        name = name or default or next(iter(sorted(current)), None)
        return (name, version or current.get(name)), ", ".join(sorted(current)) or "none loaded"

    def image_model(self, name: str | None, version: str | None = None) -> ImageModel:
        """The image model `name` (current version unless `version`): an image encoder or a CLIP
        model's image side. Without a name, the default one: the setting, else the first by name. A
        loaded text encoder is a 422, not a 404."""
        key, known = self._resolve(self.image_models, name, self.settings.default_image_model, version)
        if key in self.image_models:
            return self.image_models[key]
        name = key[0]
        self._raise_if_failed(name)
        if name in self.manifests and self.manifests[name].kind == "text-encoder":  # loaded, so not a 404
            raise InvalidInput(f"model {name!r} is a text encoder: it embeds texts only and has no image tower, "
                               f"which embedding images and zero-shot need; name a model that has one: {known}")
        raise UnknownModel(f"no image encoder named {_wanted(name, version)}; available: {known}")

    def text_model(self, name: str | None, version: str | None = None) -> TextModel:
        """The text model `name` (current version unless `version`): a CLIP model's text side or a
        text encoder. Without a name, the default one: the setting, else the first CLIP model by
        name (what /zero-shot needs), else the first text encoder. A loaded model without a text
        tower is a 422, not a 404."""
        manifests = dict(self.manifests)
        clip = sorted(n for n, v in list(self.text_models) if n in manifests and manifests[n].kind == "image-text-encoder")
        default = self.settings.default_text_model or next(iter(clip), None)
        key, known = self._resolve(self.text_models, name, default, version)
        if key in self.text_models:
            return self.text_models[key]
        name = key[0]
        self._raise_if_failed(name)
        if name in manifests and manifests[name].kind not in ("image-text-encoder", "text-encoder"):
            raise InvalidInput(f"model {name!r} ({manifests[name].kind}) has no text tower; "
                               f"name a text model (a CLIP model or a text encoder): {known}")
        raise UnknownModel(f"no text model named {_wanted(name, version)}; available: {known}")

    @property
    def batchers(self) -> list[MicroBatcher]:
        return [m.batcher for m in [*list(self.image_models.values()), *list(self.text_models.values())]]

    async def start(self) -> None:
        for batcher in self.batchers:
            await batcher.start()

    async def stop(self) -> None:
        for batcher in self.batchers:
            await batcher.stop()

    @property
    def ready(self) -> bool:
        return bool(self.manifests)

    def word_model(self, name: str | None) -> WordModel:
        """The word-vectors model `name`, or the default one (the setting, else the only/first)."""
        _check_model_name(name)
        name = name or self.settings.default_word_model or next(iter(sorted(self.words)), None)
        if name is None or name not in self.words:
            self._raise_if_failed(name)
            if name is None:
                raise UnknownModel("this server has no word-vectors model: export one (`embedserve train word2vec`) "
                                   "into its artifacts folder, then POST /admin/reload")
            known = ", ".join(sorted(self.words)) or "none loaded"
            raise UnknownModel(f"no word-vectors model named {name!r}; available: {known}")
        return WordModel(self.manifests[name], self.words[name])

    def _raise_if_failed(self, name: str | None) -> None:
        if name in self.failed:
            raise NotReady(f"model {name!r} could not be loaded ({self.failed[name]}); the operator must re-export "
                           "or restore it, then POST /admin/reload")

    def close(self) -> None:
        for batcher in self.batchers:
            batcher.encoder.close()
        self.images.close()
        self.index_store.close()


_retiring: set[asyncio.Task] = set()  # the event loop keeps only weak references to its tasks


def index_model(index: SearchIndex, embedded: str, instead: str) -> tuple[str, str | None]:
    """(model, model version) that `index` was built with, which must embed `embedded` for it; an
    index of vectors sent by clients records none: InvalidInput saying what to send `instead`."""
    if index.model is None:
        raise InvalidInput(f"index {index.manifest.name!r} records no model, so {embedded} cannot be embedded for it; {instead}")
    return index.model, index.model_version


def index_precision(index: SearchIndex) -> str | None:
    """The precision an index's vectors were embedded at (index builds and jobs record it), or None
    for an index of vectors sent by clients or built before precisions were recorded."""
    return (index.manifest.extra or {}).get("precision") if index.manifest else None


def retire_later(batchers: list[MicroBatcher], grace_s: float = 10.0) -> None:
    """`retire` in the background, on the running event loop."""
    if batchers:
        task = asyncio.create_task(retire(batchers, grace_s), name="retire-batchers")
        _retiring.add(task)
        task.add_done_callback(_retiring.discard)


async def retire(batchers: list[MicroBatcher], grace_s: float = 10.0) -> None:
    """Stop `batchers` and close their sessions `grace_s` after they left the registry: a request
    that took one just before a reload finishes on it (its own submit restarts nothing after that)."""
    if not batchers:
        return
    await asyncio.sleep(grace_s)
    for batcher in batchers:
        await batcher.stop()
        batcher.encoder.close()


def _probe(encoder: Encoder, batch: np.ndarray) -> None:
    """Run one known input through a freshly loaded model: a model whose file was damaged after
    export can load and still answer garbage; refuse it now rather than serve zeros or NaNs."""
    out = encoder.encode(batch)
    if not np.isfinite(out).all() or not np.any(out):
        raise ValueError(f"model {encoder.manifest.name} {encoder.manifest.version} answers a probe with "
                         f"{'non-finite' if not np.isfinite(out).all() else 'all-zero'} embeddings; re-export it")


def _check_model_name(name: str | None, version: str | None = None) -> None:
    """InvalidName (a 422) for a model name or version a request sent that is not a plain name, the
    one rule every name a client sends passes, though these are looked up in memory only."""
    if name is not None:
        check_name(name, "model name")
    if version is not None:
        check_name(version, "model version")


def _wanted(name: str | None, version: str | None) -> str:
    """How an error names the model a request asked for."""
    return f"{name!r}" + (f" version {version!r}" if version else "")
