"""Features of a subject's reference images: what the generator is conditioned on.

Three sources, one interface (`FeatureSource.__call__(images) -> (N, D)`), selectable and recorded with a generator:

- `judge`: the glyph world's judge (a CNN trained on renders to name each attribute), its pooled features — the
  glyph world's DINO;
- `vae`: the frozen VAE encoder of the base model: per-channel mean and std of the posterior-mean latents and their
  2 × 2 average pool (colour, texture and coarse layout as the diffusion model itself sees them);
- `image-encoder`: a local transformers checkpoint (`--image-encoder PATH`): CLIP image embeddings when the model has
  `get_image_features`, else the CLS token of its last hidden state (DINO, ViT).

A subject's condition is the mean of its references' features (a set of any size gives one vector).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

FEATURE_SOURCES = ("judge", "vae", "image-encoder")


class FeatureSource(Protocol):
    name: str

    def __call__(self, images: Sequence[Any]) -> Tensor: ...


def _pixels(images: Sequence[Any], size: int) -> Tensor:
    """PIL images → (N, 3, size, size) in [-1, 1] (bicubic resize where needed)."""
    import numpy as np
    from PIL import Image

    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(image))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class JudgeFeatures:
    """The judge's pooled features (`Judge.features`) on 32 × 32 images, the size it was trained on."""

    name = "judge"

    def __init__(self, judge: torch.nn.Module, size: int = 32) -> None:
        self.judge = judge.eval().requires_grad_(False)
        self.size = size

    @torch.no_grad()
    def __call__(self, images: Sequence[Any]) -> Tensor:
        return self.judge.features(_pixels(images, self.size)).double()


class VaeFeatures:
    """Statistics of the base model's VAE latents: per-channel mean, per-channel std, 2 × 2 pooled map."""

    name = "vae"

    def __init__(self, vae: torch.nn.Module, size: int) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.size = size

    @torch.no_grad()
    def __call__(self, images: Sequence[Any]) -> Tensor:
        pixels = _pixels(images, self.size).to(self.vae.device, self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.mean.double()
        pooled = F.adaptive_avg_pool2d(latents, 2).flatten(1)
        return torch.cat([latents.mean(dim=(2, 3)), latents.std(dim=(2, 3)), pooled], dim=1).cpu()


class ImageEncoderFeatures:
    """A local transformers image encoder: CLIP image embeddings, or the CLS token of the last hidden state."""

    name = "image-encoder"

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoImageProcessor, AutoModel

        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--image-encoder {folder} is not a local transformers checkpoint (no config.json)")
        self.model = AutoModel.from_pretrained(str(folder)).eval().requires_grad_(False)
        self.processor = AutoImageProcessor.from_pretrained(str(folder))

    @torch.no_grad()
    def __call__(self, images: Sequence[Any]) -> Tensor:
        inputs = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.model.dtype)
        if hasattr(self.model, "get_image_features"):
            output = self.model.get_image_features(pixel_values=pixels)
            output = output if isinstance(output, Tensor) else output.pooler_output
        else:
            output = self.model(pixel_values=pixels).last_hidden_state[:, 0]
        return output.double().cpu()


def read_references(folder: str | Path) -> list:
    """Every image of a reference folder as RGB (any sizes: each source resizes); a missing or empty folder or an
    unreadable file is an error naming it."""
    from ..diffusion.images import read_images

    return read_images(folder, "reference image")


def build_sources(
    names: Sequence[str],
    *,
    judge: torch.nn.Module | None = None,
    vae: torch.nn.Module | None = None,
    vae_size: int | None = None,
    image_encoder: str | Path | None = None,
) -> list[FeatureSource]:
    """The feature sources `names`, each from what it needs (a clear error when that was not given)."""
    unknown = sorted(set(names) - set(FEATURE_SOURCES))
    if unknown or not names:
        raise ValueError(f"unknown feature source(s) {unknown or names}; choose from {', '.join(FEATURE_SOURCES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"feature sources repeat: {list(names)}")
    sources: list[FeatureSource] = []
    for name in names:
        if name == "judge":
            if judge is None:
                raise ValueError("the judge feature source needs a judge (--judge DIR or --cache-dir)")
            sources.append(JudgeFeatures(judge))
        elif name == "vae":
            if vae is None or vae_size is None:
                raise ValueError("the vae feature source needs the base model's VAE (--model)")
            sources.append(VaeFeatures(vae, vae_size))
        else:
            if image_encoder is None:
                raise ValueError("the image-encoder feature source needs --image-encoder PATH")
            sources.append(ImageEncoderFeatures(image_encoder))
    return sources


def condition(sources: Sequence[FeatureSource], images: Sequence[Any]) -> dict[str, Tensor]:
    """One subject's condition: per source, the mean of its reference images' features (float64, 1-D)."""
    if not images:
        raise ValueError("a subject needs at least one reference image")
    return {source.name: source(images).mean(0) for source in sources}
