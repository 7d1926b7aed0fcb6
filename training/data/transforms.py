"""Image transform pipelines, one class per method (torchvision.transforms.v2 on Pillow images).

EvalTransform is the deterministic one that export bundles describe with `preprocessing_spec`;
serving reproduces it without torch through runtime.preprocessing.preprocess_image.
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

from runtime.preprocessing import PreprocessingSpec, normalize_image


def preprocessing_spec(image_size: int, mode: str, mean: Sequence[float], std: Sequence[float],
                       resize: int | None = None) -> PreprocessingSpec:
    """The bundle's description of EvalTransform: Pillow bilinear resize of the shorter side to
    `resize`, centre crop `image_size`, /255, then (x - mean) / std per channel."""
    return PreprocessingSpec(mode=mode, resize=resize or image_size, crop=image_size,
                             mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


class _Normalize:
    """Any Pillow image to the pipeline's mode (see normalize_image); the first step of every pipeline."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        return normalize_image(img, self.mode)


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class EvalTransform:
    """Deterministic: normalize_image -> resize shorter side (bilinear, Pillow) -> centre crop ->
    float in [0, 1] -> (x - mean) / std. Returns a float tensor (C, image_size, image_size)."""

    def __init__(self, image_size: int, mode: str, mean: Sequence[float], std: Sequence[float], resize: int | None = None):
        self.spec = preprocessing_spec(image_size, mode, mean, std, resize)
        self.pipeline = v2.Compose([
            _Normalize(mode),
            v2.Resize(self.spec.resize, interpolation=v2.InterpolationMode.BILINEAR),
            v2.CenterCrop(image_size),
            *_to_normalized_tensor(mean, std),
        ])

    @classmethod
    def from_spec(cls, spec: PreprocessingSpec) -> EvalTransform:
        """The transform a bundle's or checkpoint's preprocessing spec (`.spec`) describes."""
        return cls(spec.crop, spec.mode, spec.mean, spec.std, resize=spec.resize)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.pipeline(img)


class MAETransform:
    """Light augmentation for MAE (masking does the heavy lifting): random resized crop and flip."""

    def __init__(self, image_size: int, mode: str, mean: Sequence[float], std: Sequence[float],
                 min_scale: float = 0.35, hflip_prob: float = 0.5):
        self.pipeline = v2.Compose([
            _Normalize(mode),
            v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.RandomHorizontalFlip(hflip_prob),
            *_to_normalized_tensor(mean, std),
        ])

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.pipeline(img)


class SimCLRTransform:
    """SimCLR's two random views: resized crop, flip, colour jitter (brightness/contrast only for
    greyscale; plus saturation/hue and random greyscale for colour), Gaussian blur."""

    def __init__(self, image_size: int, mode: str, mean: Sequence[float], std: Sequence[float],
                 min_scale: float = 0.2, hflip_prob: float = 0.5, jitter_strength: float = 0.4,
                 jitter_prob: float = 0.8, grayscale_prob: float = 0.2, blur_prob: float = 0.5):
        colour = mode == "RGB"
        s = jitter_strength
        jitter = v2.ColorJitter(brightness=s, contrast=s, saturation=s if colour else 0, hue=s / 4 if colour else 0)
        blur_kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)  # ~10% of the image, odd, as in SimCLR
        self.pipeline = v2.Compose([
            _Normalize(mode),
            v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.RandomHorizontalFlip(hflip_prob),
            v2.RandomApply([jitter], p=jitter_prob),
            *([v2.RandomGrayscale(grayscale_prob)] if colour else []),  # greyscale images have no colour to drop
            v2.RandomApply([v2.GaussianBlur(blur_kernel, sigma=(0.1, 2.0))], p=blur_prob),
            *_to_normalized_tensor(mean, std),
        ])

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pipeline(img), self.pipeline(img)
