"""The model bundle: the one contract between the torch half and the serving half.

A bundle is a folder `artifacts/models/<name>/<version>/` holding `manifest.json` and the files
it names. This module is the only place that writes or reads one, and the only one that knows
the manifest's layout: everything else reads typed fields (`manifest.preprocessing.crop`,
`manifest.onnx_io("text_encoder").inputs`). Bundles are written to a temporary folder and renamed
into place (runtime.files), so a reader never sees half of one, and a `current` file per name
says which version is served.

Schemas 2 and 3 are written (a bundle at the lowest that describes it). Schema-1 manifests are
read and upgraded in memory, so bundles already on a disk keep serving unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from runtime.files import VersionError, atomic_write_text, names_under, version_folder, write_versioned_dir
from runtime.preprocessing import PreprocessingSpec

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # the newest schema this code reads and writes
# Schema 3 adds to schema 2 only image preprocessing that CLIPs imported from other libraries use
# (bicubic resizing, crop offsets rounded down, transparency dropped: runtime.preprocessing.PreprocessingSpec); a bundle
# that uses none of it is written as schema 2, which earlier code reads and serves the same.
PREPROCESSING_SCHEMA_2 = {"interpolation": "bilinear", "crop_offset": "round", "alpha": "white"}
MANIFEST_FILE = "manifest.json"
KINDS = ("image-encoder", "text-encoder", "image-text-encoder", "word-vectors")
METHODS = ("simclr", "mae", "clip", "word2vec", "sentence-transformers")  # sentence-transformers: imported, not trained here
# The file role each kind's model plays when a caller names none; a CLIP bundle holds two models.
DEFAULT_ROLES = {"image-encoder": "image_encoder", "text-encoder": "text_encoder", "image-text-encoder": "image_encoder"}
REEXPORT_HINT = "re-export it: embedserve export --checkpoint <its checkpoint> --name <name>"

T = TypeVar("T")


class BundleError(Exception):
    """A bundle (or index) is missing, incomplete or of a schema this code cannot read."""


def dataclass_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """`cls(**data)` for a flat frozen dataclass read from JSON: unknown keys are ignored (a newer
    writer's additions), and lists become tuples where the field is a tuple."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            is_tuple = typing.get_origin(hints[f.name]) is tuple
            values[f.name] = tuple(value) if is_tuple and isinstance(value, list) else value
    return cls(**values)


@dataclass(frozen=True)
class TokenizerSpec:
    """The tokenizer of a text encoder: a `tokenizers` file that pads and truncates by itself."""

    file: str  # tokenizer.json inside the bundle
    context_length: int  # tokens per text, special tokens included


@dataclass(frozen=True)
class OnnxIO:
    """The names of one ONNX model's inputs (in the order they travel stacked) and output."""

    inputs: tuple[str, ...]  # e.g. ("images",), or ("ids", "attention_mask") for a text tower
    output: str  # e.g. "embeddings"


QUERY_BANK_ROLE = "query_bank"  # the file role of a CLIP bundle's bank: (N, dim) float32 training-image embeddings
QUERY_BANK_K = 10  # a class's offset averages its k largest cosines to the bank


@dataclass(frozen=True)
class QueryBankSpec:
    """Zero-shot normalisation's bank of training-image embeddings (index.class_matrix)."""

    images: int  # rows in the bank file
    k: int = QUERY_BANK_K  # a class's offset averages its k largest cosines to the bank
    seed: int = 0  # which random training images
    source: str = ""  # where they came from, for humans


CENTERING_MEAN_ROLE = "embedding_mean"  # file role: (dim,) float32, the mean raw embedding of training images
CENTERING_WHITENING_ROLE = "whitening"  # file role: (dim, dim) float32, applied after subtracting the mean


@dataclass(frozen=True)
class CenteringSpec:
    """An image encoder whose ONNX graph ends in unit((e - mean) @ whitening), both fitted on the raw
    embeddings e of training images at export (export.image_encoder): pooled CNN/ViT features sit
    in a narrow cone, where every cosine is near 1; centred and whitened they spread over [-1, 1]."""

    images: int  # training images the mean and covariance were estimated from
    shrinkage: float = 1.0  # whitening = (covariance + shrinkage * mean variance * I) ** -1/2
    seed: int = 0  # which random training images
    source: str = ""  # where they came from, for humans


# File role of the training curves (training.curves: loss and per-epoch evaluation, a PNG), copied in
# by export when training drew them. For humans: optional, nothing reads it, and a bundle without it
# (older, word2vec, imported, or trained without matplotlib) is as complete; hashed like every file.
TRAINING_CURVES_ROLE = "training_curves"


@dataclass(frozen=True)
class PrecisionVariant:
    """A lower-precision copy of one of the bundle's fp32 ONNX models (export.quantize), with the
    accuracy it gave up against fp32 as measured at export. runtime.encoders.factory picks one by
    the precision setting; the file is in `files`, so it is hashed and verified like the others."""

    role: str  # the fp32 model's file role, e.g. "image_encoder"; inputs and outputs are its (Manifest.onnx)
    precision: str  # "int8" (for CPUs) or "fp16" (for GPUs)
    file_role: str  # the variant file's role in Manifest.files, e.g. "image_encoder_int8"
    technique: str  # how it was made: "dynamic-rowwise", "static-qdq" or "dynamic" (see one_at_a_time) int8, "float16"
    calibration_images: int = 0  # static int8: training images its activation ranges were calibrated on
    evaluation: str = ""  # what the figures below were measured on, for humans
    top1_pct: float | None = None  # the method's top-1 with this variant (kNN for image encoders, zero-shot for text towers)
    fp32_top1_pct: float | None = None  # the same evaluation with the fp32 model
    top1_change_pct: float | None = None  # top1_pct - fp32_top1_pct, in points; None when no labelled data was at hand
    min_cosine: float | None = None  # lowest row cosine of its outputs to the fp32 model's
    mean_cosine: float | None = None  # mean row cosine of its outputs to the fp32 model's
    cpu_speedup: float | None = None  # int8: its rows/s over fp32's at batch 32 on the exporting CPU; None: not measured

    @property
    def one_at_a_time(self) -> bool:
        """Whether it must run each item alone: a "dynamic" int8 copy (onnxruntime's quantiser)
        scales each activation tensor by its range over the whole batch at run time, so in a batch
        an item's vector would depend on its neighbours. "dynamic-rowwise" copies scale each row by
        its own range and run batched (export.quantize.quantize_rowwise_int8)."""
        return self.technique == "dynamic"


@dataclass(frozen=True)
class Manifest:
    """What `manifest.json` holds. Field meanings are the contract; keep them stable."""

    name: str  # the model's name, as clients ask for it
    kind: str  # one of KINDS
    method: str  # one of METHODS
    dim: int  # embedding dimension
    normalized: bool  # True if the encoder's outputs are already L2-normalised
    files: dict[str, str]  # role -> file name inside the bundle, e.g. {"vectors": "vectors.npy"}
    version: str = ""  # filled in by write_bundle
    preprocessing: PreprocessingSpec | None = None  # image encoders: how an image becomes input
    tokenizer: TokenizerSpec | None = None  # text encoders: the tokenizer file and context length
    onnx: dict[str, OnnxIO] = field(default_factory=dict)  # ONNX model role -> its input/output names
    logit_scale: float | None = None  # CLIP: the learned temperature's inverse, for zero-shot softmax
    class_names: tuple[str, ...] = ()  # CLIP: the classes it was trained on, when known
    query_bank: QueryBankSpec | None = None  # CLIP: zero-shot normalisation's bank (file role "query_bank")
    centering: CenteringSpec | None = None  # SimCLR/MAE: outputs centred and whitened in the graph; None: raw
    training_config: dict[str, Any] = field(default_factory=dict)  # the config that trained it
    metrics: dict[str, Any] = field(default_factory=dict)  # evaluation results at export
    extra: dict[str, Any] = field(default_factory=dict)  # facts for humans (opset, parity cosines); no code reads it
    created_at: str = ""  # ISO-8601 UTC, filled in by write_bundle
    source_checkpoint_sha256: str | None = None  # hash of the checkpoint it was exported from
    file_sha256: dict[str, str] = field(default_factory=dict)  # file name -> sha256, by write_bundle
    schema_version: int = SCHEMA_VERSION
    variants: tuple[PrecisionVariant, ...] = ()  # int8/fp16 copies of the ONNX models; (): fp32 only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BundleError(f"unknown bundle kind {self.kind!r}; expected one of {KINDS}")
        if self.method not in METHODS:
            raise BundleError(f"unknown method {self.method!r}; expected one of {METHODS}")

    def onnx_io(self, role: str) -> OnnxIO:
        """The input and output names of the ONNX model that plays `role`."""
        if role not in self.onnx:
            raise BundleError(f"model {self.name} {self.version} records no ONNX names for {role!r} "
                              f"(it has {sorted(self.onnx)}); {REEXPORT_HINT}")
        return self.onnx[role]

    def variant(self, role: str, precision: str) -> PrecisionVariant | None:
        """The `precision` copy of the model that plays `role`, or None (fp32 is the model itself)."""
        return next((v for v in self.variants if v.role == role and v.precision == precision), None)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Read a manifest's JSON: schemas 2 and 3 as written, schema 1 upgraded in memory."""
        schema = data.get("schema_version")
        if schema == 1:
            data = _upgrade_v1(data)
        elif schema not in (2, SCHEMA_VERSION):
            raise BundleError(f"manifest schema {schema!r} is newer than this code reads ({SCHEMA_VERSION}): "
                              f"upgrade embedserve, or {REEXPORT_HINT}")
        data = dict(data)
        if data.get("preprocessing") is not None:
            data["preprocessing"] = PreprocessingSpec.from_dict(data["preprocessing"])
        if data.get("tokenizer") is not None:
            data["tokenizer"] = dataclass_from_dict(TokenizerSpec, data["tokenizer"])
        if data.get("query_bank") is not None:
            data["query_bank"] = dataclass_from_dict(QueryBankSpec, data["query_bank"])
        if data.get("centering") is not None:
            data["centering"] = dataclass_from_dict(CenteringSpec, data["centering"])
        data["onnx"] = {role: dataclass_from_dict(OnnxIO, io) for role, io in (data.get("onnx") or {}).items()}
        data["variants"] = tuple(dataclass_from_dict(PrecisionVariant, v) for v in data.get("variants") or ()) \
            or _legacy_fp16_variants(data)
        return dataclass_from_dict(cls, data)


def _legacy_fp16_variants(data: dict[str, Any]) -> tuple[PrecisionVariant, ...]:
    """Bundles exported with --fp16 before variants were recorded name their copy "<role>_fp16"."""
    files, extra = data.get("files") or {}, data.get("extra") or {}
    return tuple(PrecisionVariant(role=role[: -len("_fp16")], precision="fp16", file_role=role, technique="float16",
                                  min_cosine=extra.get("fp16_parity_min_cosine"))
                 for role in sorted(files) if role.endswith("_fp16") and role[: -len("_fp16")] in files)


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 manifest as schema 2: the facts v1 kept in `extra` and in untyped dicts move to
    their typed fields; the rest stays in `extra`."""
    data, extra = dict(data), dict(data.get("extra") or {})
    onnx = {role: {"inputs": io["inputs"], "output": io["outputs"][0]} for role, io in extra.pop("onnx_io", {}).items()}
    if "onnx_input" in extra:  # v1 image encoders named their one model's input and output in extra
        onnx[DEFAULT_ROLES[data["kind"]]] = {"inputs": [extra.pop("onnx_input")], "output": extra.pop("onnx_output")}
    data["onnx"] = onnx
    for name in ("logit_scale", "class_names", "query_bank"):
        if name in extra:
            data[name] = extra.pop(name)
    tokenizer = data.get("tokenizer")
    if tokenizer is not None and "file" not in tokenizer:  # v1 word vectors described their tokenisation here
        extra["tokenization"] = tokenizer
        data["tokenizer"] = None
    data["extra"], data["schema_version"] = extra, 2  # what v1 described, schema 2 describes
    return data


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk: its folder and its manifest."""

    path: Path
    manifest: Manifest

    def optional_file(self, role: str) -> Path | None:
        """The path of the file that plays `role`, or None when the bundle has none (training curves)."""
        return self.path / self.manifest.files[role] if role in self.manifest.files else None

    def file(self, role: str) -> Path:
        """The path of the file that plays `role` (e.g. "vectors", "image_encoder")."""
        try:
            return self.path / self.manifest.files[role]
        except KeyError:
            raise BundleError(f"bundle {self.path} has no {role!r} file; it has {sorted(self.manifest.files)}") from None


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def models_dir(artifacts: Path) -> Path:
    return Path(artifacts) / "models"


def write_bundle(
    artifacts: Path,
    manifest: Manifest,
    write_files: Callable[[Path], None],
    version: str | None = None,
    make_current: bool = True,
) -> Bundle:
    """Write a bundle: `write_files(folder)` writes every file the manifest names into a
    temporary folder; this adds hashes, version and time to the manifest, writes it, and
    renames the folder to `artifacts/models/<name>/<version>`."""

    def fill(tmp: Path, version: str) -> None:
        write_files(tmp)
        missing = [f for f in manifest.files.values() if not (tmp / f).is_file()]
        if missing:
            raise BundleError(f"the bundle writer did not write {missing}")
        final = dataclasses.replace(
            manifest,
            version=version,
            schema_version=_lowest_schema(manifest),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            file_sha256={f: sha256_file(tmp / f) for f in sorted(manifest.files.values())},
        )
        atomic_write_text(tmp / MANIFEST_FILE, final.to_json())

    try:
        path = write_versioned_dir(models_dir(artifacts) / manifest.name, fill, version, make_current)
    except VersionError as e:
        raise BundleError(str(e)) from e
    return read_bundle(path)


def _lowest_schema(manifest: Manifest) -> int:
    """The oldest schema that describes `manifest`, so that code of that schema still serves it."""
    spec = manifest.preprocessing
    uses_3 = spec is not None and any(getattr(spec, k) != v for k, v in PREPROCESSING_SCHEMA_2.items())
    return SCHEMA_VERSION if uses_3 else 2


def read_manifest(path: Path, cls: type[T], what: str = "bundle") -> T:
    """The `cls` (Manifest, or an index's manifest) in folder `path`'s manifest.json, or BundleError."""
    manifest_path = Path(path) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a{'n' if what[0] in 'aeiou' else ''} {what}: it has no {MANIFEST_FILE}")
    try:
        return cls.from_dict(json.loads(manifest_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, KeyError, ValueError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{manifest_path} is not a valid manifest ({type(e).__name__}: {e}); {REEXPORT_HINT}") from e


def read_bundle(path: Path, verify: bool = False) -> Bundle:
    """Read the bundle in folder `path`. With `verify`, also check every file's sha256."""
    path = Path(path)
    manifest = read_manifest(path, Manifest)
    for name in manifest.files.values():
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle {path} is missing {name}")
        if verify and manifest.file_sha256.get(name) != sha256_file(file):
            raise BundleError(f"bundle {path}: {name} does not match its sha256 in the manifest")
    return Bundle(path=path, manifest=manifest)


def open_bundle(artifacts: Path, name: str, version: str | None = None) -> Bundle:
    """The bundle `name` at `version`, or at its current version."""
    try:
        folder = version_folder(models_dir(artifacts), name, version, what="model")
    except VersionError as e:
        raise BundleError(str(e)) from e
    return read_bundle(folder)


def iter_current(root: Path, load: Callable[[Path], T], what: str) -> Iterator[T]:
    """`load(folder)` of every name's current version under `root`, by name; a name whose current
    version cannot be read is logged and skipped, so one broken folder does not hide the rest."""
    for name in names_under(root):
        try:
            yield load(version_folder(root, name, what=what))
        except Exception as e:  # noqa: BLE001 - whatever is wrong with one folder, the others still load
            log.warning("skipping %s folder %s: %s", what, Path(root) / name, e)


def iter_current_bundles(artifacts: Path) -> Iterator[Bundle]:
    """Every model's current bundle, by name, skipping folders that hold no readable version."""
    return iter_current(models_dir(artifacts), read_bundle, "model")
