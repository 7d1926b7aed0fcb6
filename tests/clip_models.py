"""Tiny random CLIP folders made by the libraries themselves, as users' folders are laid out: a
Hugging Face CLIPModel (transformers' save_pretrained) and an open_clip model (open_clip's
create_model with a tiny model_cfg, saved as its hf-hub layout). The tokenizer is CLIP's real BPE,
from the bpe_simple_vocab_16e6.txt.gz that the open-clip-torch wheel ships: nothing is downloaded."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from PIL import Image

CONTEXT = 77
VOCAB = 49408  # CLIP's BPE: 256 bytes, the same with '</w>', 48894 merges, start and end tokens
TINY_IMAGE = 32  # the tiny models' input side; their preprocessing resizes the shortest side to it, then crops


def clip_bpe() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary and merges, as open_clip's SimpleTokenizer builds them, with Hugging Face's
    names for the start and end tokens."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def write_transformers_clip(folder: Path, weights: str = "safetensors", tokenizer: str = "tokenizer.json",
                            eos_token_id: int = 49407, seed: int = 0) -> Path:
    """A tiny random CLIPModel saved by transformers in `folder`: config.json, weights as
    model.safetensors or pytorch_model.bin (`weights` "safetensors" or "bin"), a CLIPImageProcessor's
    preprocessor_config.json (shortest edge, bicubic, crop, OpenAI's mean and std) and the tokenizer
    as tokenizer.json or as vocab.json + merges.txt (`tokenizer`). `eos_token_id` 2 writes the
    legacy config of transformers #24777."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": CONTEXT, "eos_token_id": eos_token_id,
                     "bos_token_id": 49406, "pad_token_id": 49407},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": TINY_IMAGE, "patch_size": 8},
        projection_dim=16)
    model = CLIPModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=weights == "safetensors")
    if weights == "bin" and not (folder / "pytorch_model.bin").is_file():  # transformers 5 writes safetensors only
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink(missing_ok=True)
    CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE}) \
        .save_pretrained(folder)
    vocab, merges = clip_bpe()
    if tokenizer == "tokenizer.json":
        CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges]).save_pretrained(folder)
        for name in ("vocab.json", "merges.txt"):
            (folder / name).unlink(missing_ok=True)
    else:
        (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


OPEN_CLIP_CFG = {  # a tiny ViT CLIP in open_clip's model_cfg format
    "embed_dim": 16,
    "vision_cfg": {"image_size": TINY_IMAGE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 32, "heads": 2, "layers": 2},
}


def write_open_clip(folder: Path, weights: str = "safetensors", seed: int = 0, model_cfg: dict | None = None) -> Path:
    """A tiny random open_clip CLIP in `folder` as save_for_hf lays it out: open_clip_config.json
    (model_cfg, preprocess_cfg) and open_clip_model.safetensors or open_clip_pytorch_model.bin.
    The model is built by open_clip.create_model from `model_cfg` registered under a name of its
    own; open_clip's own BPE is its tokenizer, so no tokenizer file is needed."""
    import open_clip
    import torch
    from open_clip.push_to_hf_hub import save_config_for_hf

    cfg = model_cfg or OPEN_CLIP_CFG
    name = f"embedserve-test-{seed}-{abs(hash(json.dumps(cfg, sort_keys=True)))}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / f"{name}.json").write_text(json.dumps(cfg), encoding="utf-8")
    open_clip.add_model_config(folder.parent / f"{name}.json")
    torch.manual_seed(seed)
    model = open_clip.create_model(name, device="cpu").eval()
    with torch.no_grad():  # a logit scale unlike CLIP's init, so a test sees it is read from the weights
        model.logit_scale.fill_(2.5)
    if weights == "safetensors":
        import safetensors.torch

        safetensors.torch.save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    else:
        torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=cfg)
    return folder


def photo_png(folder: Path, name: str, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Path:
    """A smooth synthetic picture of `size` (W, H) in `mode` (RGB, L or RGBA), saved as a PNG."""
    gradient = Image.linear_gradient("L").resize(size)
    channels = [gradient, gradient.rotate(90).resize(size), Image.radial_gradient("L").resize(size)]
    img = Image.merge("RGB", channels)
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    elif mode == "L":
        img = img.convert("L")
    path = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
