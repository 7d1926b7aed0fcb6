"""What a CLIP folder that another library saved declares, read from its JSON files without torch:
a Hugging Face `CLIPModel` folder (config.json, preprocessor_config.json, the tokenizer) or an
open_clip folder (open_clip_config.json, as `save_for_hf` and `hf-hub:` lay it out). Each becomes
a `ClipFolder`: where its weights are, how an image becomes input (the bundle's PreprocessingSpec),
and which tokenizer files it has. A file that is missing, or a setting this importer does not
reproduce, is a FolderError naming it, before any weights are read (export.clip_import loads them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.folders import FolderError, read_json
from runtime.preprocessing import PreprocessingSpec

HF_CONFIG = "config.json"
HF_PREPROCESSOR = "preprocessor_config.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")  # the first present is read
HF_TOKENIZERS = (("tokenizer.json",), ("vocab.json", "merges.txt"))  # a fast tokenizer, or the BPE files it is built from
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Pillow's resampling codes, as `resample` in preprocessor_config.json gives them, that the bundle reproduces.
HF_RESAMPLE = {2: "bilinear", 3: "bicubic"}
OPEN_CLIP_TEXT_POOLING = ("argmax", "eos")  # open_clip's text_cfg.pool_type values: the end-of-text token's state
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the mean and std OpenAI's CLIP was trained with, per RGB channel
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
RESCALE = 1 / 255  # the pixel scale both libraries and runtime.preprocessing use
CONTEXT_LENGTH = 77  # CLIP's text context, special tokens included, when a config names none


@dataclass(frozen=True)
class ClipFolder:
    """A CLIP folder as this importer reads it."""

    path: Path  # the folder
    library: str  # "transformers" (a CLIPModel folder) or "open_clip"
    weights: Path  # the weights file the library loads (safetensors preferred; .bin is loaded weights-only)
    preprocessing: PreprocessingSpec  # resize the shortest side, centre crop, mean and std, as the source does
    context_length: int  # tokens per text, start and end tokens included
    tokenizer_files: tuple[Path, ...]  # tokenizer.json, or vocab.json + merges.txt; () for open_clip's own BPE
    config: dict[str, Any]  # the folder's model configuration, recorded in the manifest


def read_clip_folder(folder: Path | str) -> ClipFolder:
    """The declaration of the CLIP model in `folder`, of whichever layout it is, or FolderError."""
    path = Path(folder)
    if not path.is_dir():
        raise FolderError(f"{path} is not a folder; give the folder of a Hugging Face CLIPModel (config.json) "
                          f"or of an open_clip model ({OPEN_CLIP_CONFIG})")
    if (path / OPEN_CLIP_CONFIG).is_file():
        return _open_clip_folder(path)
    return _transformers_folder(path)


def _first_file(path: Path, names: tuple[str, ...], what: str) -> Path:
    found = next((path / n for n in names if (path / n).is_file()), None)
    if found is None:
        raise FolderError(f"{path / names[0]} is missing (nor is there {' or '.join(names[1:])}): {what}")
    return found


def _transformers_folder(path: Path) -> ClipFolder:
    config = read_json(path / HF_CONFIG, f"a Hugging Face CLIPModel's configuration (or, for open_clip, {OPEN_CLIP_CONFIG})")
    model_type = config.get("model_type")
    if model_type != "clip":
        raise FolderError(f"{path / HF_CONFIG}: model_type {model_type!r} is not supported; this importer reads "
                          "CLIPModel folders (model_type 'clip') and open_clip folders")
    weights = _first_file(path, HF_WEIGHTS, "the weights")
    tokenizer = next((tuple(path / n for n in names) for names in HF_TOKENIZERS if all((path / n).is_file() for n in names)), None)
    if tokenizer is None:
        raise FolderError(f"{path / 'tokenizer.json'} is missing (nor are there vocab.json and merges.txt): the tokenizer")
    text = config.get("text_config") or {}
    context = int(text.get("max_position_embeddings", CONTEXT_LENGTH))
    preprocessing = _transformers_preprocessing(path / HF_PREPROCESSOR)
    return ClipFolder(path=path, library="transformers", weights=weights, preprocessing=preprocessing,
                      context_length=context, tokenizer_files=tokenizer, config=config)


def _pixels(value: Any, where: Path, key: str) -> int:
    """An image side from preprocessor_config.json: an int, or {"shortest_edge"}, or a square {"height", "width"}."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value and key == "size":
            return int(value["shortest_edge"])
        if key == "crop_size" and value.get("height") == value.get("width") and isinstance(value.get("height"), int):
            return int(value["height"])
    raise FolderError(f"{where}: {key} {value!r} is not supported; this importer resizes the shortest edge "
                      "(size: an int or {\"shortest_edge\": n}) and crops a square (crop_size: n or equal height and width)")


def _transformers_preprocessing(where: Path) -> PreprocessingSpec:
    config = read_json(where, "how the model's images are resized, cropped and normalised")
    if not config.get("do_resize", True) or not config.get("do_center_crop", True):
        raise FolderError(f"{where}: do_resize and do_center_crop must be true; this importer resizes and crops "
                          "every image to the model's square input")
    if not config.get("do_convert_rgb", True):
        raise FolderError(f"{where}: do_convert_rgb false is not supported; this importer gives the model RGB")
    resample = config.get("resample", 3)
    if resample not in HF_RESAMPLE:
        raise FolderError(f"{where}: resample {resample!r} is not supported; this importer resizes bicubic (3) "
                          "or bilinear (2)")
    if config.get("do_rescale", True) is not True or abs(float(config.get("rescale_factor", RESCALE)) - RESCALE) > 1e-9:
        raise FolderError(f"{where}: pixels must be rescaled by 1/255 (do_rescale true, rescale_factor 1/255)")
    resize, crop = _pixels(config.get("size"), where, "size"), _pixels(config.get("crop_size"), where, "crop_size")
    normalize = config.get("do_normalize", True)
    mean = config.get("image_mean") if normalize else [0.0, 0.0, 0.0]
    std = config.get("image_std") if normalize else [1.0, 1.0, 1.0]
    return _spec(mode="RGB", resize=resize, crop=crop, mean=mean, std=std, interpolation=HF_RESAMPLE[resample],
                 crop_offset="floor", where=where)  # transformers' center_crop rounds the offset down


def _spec(where: Path, **fields: Any) -> PreprocessingSpec:
    try:
        return PreprocessingSpec(mode=fields["mode"], resize=int(fields["resize"]), crop=int(fields["crop"]),
                                 mean=tuple(float(m) for m in fields["mean"]), std=tuple(float(s) for s in fields["std"]),
                                 interpolation=fields["interpolation"], crop_offset=fields.get("crop_offset", "round"),
                                 alpha=fields.get("alpha", "white"))
    except (TypeError, ValueError) as e:
        raise FolderError(f"{where}: the image preprocessing is not one this importer reproduces ({e})") from None


def _open_clip_folder(path: Path) -> ClipFolder:
    where = path / OPEN_CLIP_CONFIG
    config = read_json(where, "the open_clip model's configuration")
    model_cfg, preprocess_cfg = config.get("model_cfg"), config.get("preprocess_cfg") or {}
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "text_cfg" not in model_cfg:
        raise FolderError(f"{where} has no model_cfg with vision_cfg and text_cfg; save the model with open_clip's save_for_hf")
    weights = _first_file(path, OPEN_CLIP_WEIGHTS, "the weights")
    text_cfg, vision_cfg = model_cfg["text_cfg"], model_cfg["vision_cfg"]
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text_cfg.get(key):
            raise FolderError(f"{where}: text_cfg.{key} {text_cfg[key]!r} is not supported; this importer reads open_clip's "
                              "own text transformer and CLIP BPE tokenizer (a Hugging Face text tower would be downloaded)")
    pool = text_cfg.get("pool_type", "argmax")
    if pool not in OPEN_CLIP_TEXT_POOLING:
        raise FolderError(f"{where}: text_cfg.pool_type {pool!r} is not supported; this importer pools the end-of-text "
                          f"token ({' or '.join(OPEN_CLIP_TEXT_POOLING)})")
    resize_mode = preprocess_cfg.get("resize_mode", "shortest")
    if resize_mode != "shortest":
        raise FolderError(f"{where}: preprocess_cfg.resize_mode {resize_mode!r} is not supported; this importer resizes "
                          "the shortest side and crops the centre ('shortest')")
    size = preprocess_cfg.get("size", vision_cfg.get("image_size", 224))
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise FolderError(f"{where}: image size {size!r} is not square; this importer crops a square")
        size = size[0]
    interpolation = preprocess_cfg.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear"):
        raise FolderError(f"{where}: preprocess_cfg.interpolation {interpolation!r} is not supported; bicubic or bilinear")
    # what open_clip itself falls back to when the config names none (its merge_preprocess_dict)
    mean, std = preprocess_cfg.get("mean", OPENAI_MEAN), preprocess_cfg.get("std", OPENAI_STD)
    # open_clip converts to RGB after its resize and crop: transparency is dropped, not composited
    preprocessing = _spec(mode="RGB", resize=size, crop=size, mean=mean, std=std, interpolation=interpolation,
                          alpha="drop", where=where)
    return ClipFolder(path=path, library="open_clip", weights=weights, preprocessing=preprocessing,
                      context_length=int(text_cfg.get("context_length", CONTEXT_LENGTH)), tokenizer_files=(),
                      config=config)
