"""Training images for the SD runner: a user's folder, or real photos shipped with scikit-image.

Images are checked up front (unreadable files and mixed sizes are named), then served as random crops with
horizontal flips, scaled to [-1, 1] as the VAE expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
EMBEDDED_SETS = {"subject": ("chelsea",), "style": ("brick", "gravel")}


def read_images(path: str | Path, what: str = "image") -> list:
    """Every image of a folder as RGB PIL images, sorted by name; a missing or empty folder or an unreadable file is
    an error naming it (`what` names the images in the messages, e.g. 'reference image')."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot read {what} {file}: {exc}") from exc
    return images


def load_image_folder(path: str | Path, resolution: int | None = None) -> list:
    """All images of a folder as RGB PIL images.

    Without `resolution` every image must have the same size; with it, each image's shorter side is resized to
    `resolution` (crops are taken later), so mixed sizes are fine.
    """
    folder = Path(path)
    images = read_images(folder)
    sizes = sorted({image.size for image in images})
    if resolution is None and len(sizes) > 1:
        raise ValueError(
            f"images in {folder} have mixed sizes {sizes[:4]}{'…' if len(sizes) > 4 else ''}; "
            "pass a resolution (--resolution N) to resize and crop them"
        )
    return [resize_short_side(image, resolution) for image in images] if resolution else images


def resize_short_side(image, size: int):
    from PIL import Image

    scale = size / min(image.size)
    if scale == 1:
        return image
    return image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.BICUBIC)


def embedded_images(kind: str, resolution: int = 64) -> list:
    """Real photos from scikit-image: `subject` = chelsea the cat, `style` = brick and gravel textures."""
    from PIL import Image
    from skimage import data

    if kind not in EMBEDDED_SETS:
        raise ValueError(f"unknown embedded image set {kind!r}; choose one of {sorted(EMBEDDED_SETS)}")
    images = []
    for name in EMBEDDED_SETS[kind]:
        array = getattr(data, name)()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        # Big photos are shrunk first so random crops still show the whole subject at the tiny resolution.
        images.append(resize_short_side(Image.fromarray(array), 2 * resolution if kind == "style" else resolution))
    return images


class CropDataset(torch.utils.data.Dataset):
    """Random `resolution`² crops with horizontal flips of a few images, `length` items per epoch.

    Item i is drawn from a generator seeded with (seed, i), so a resumed run sees the same crops.
    """

    def __init__(self, images: Sequence, resolution: int, length: int = 1000, seed: int = 0) -> None:
        too_small = [image.size for image in images if min(image.size) < resolution]
        if too_small:
            raise ValueError(f"images smaller than the resolution {resolution}: {too_small[:4]}")
        self.arrays = [torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0) for image in images]
        self.resolution = resolution
        self.length = length
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        array = self.arrays[int(torch.randint(len(self.arrays), (1,), generator=generator))]
        height, width = array.shape[:2]
        top = int(torch.randint(height - self.resolution + 1, (1,), generator=generator))
        left = int(torch.randint(width - self.resolution + 1, (1,), generator=generator))
        crop = array[top : top + self.resolution, left : left + self.resolution].permute(2, 0, 1)
        if torch.rand(1, generator=generator) < 0.5:
            crop = crop.flip(-1)
        return crop.contiguous()


class FixedImages(torch.utils.data.Dataset):
    """Whole images served in order, item i = image i mod n, scaled to [-1, 1]: no crops and no flips, because a
    rendered glyph is already framed and a mirrored glyph is another glyph. `image_index(i)` names the image, so
    each item can carry its own caption."""

    def __init__(self, images: np.ndarray, length: int | None = None) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
            raise ValueError(f"FixedImages needs a non-empty (N, H, W, 3) array, got shape {images.shape}")
        self.pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        self.length = length or len(images)

    def __len__(self) -> int:
        return self.length

    @property
    def image_count(self) -> int:
        return len(self.pixels)

    def image_index(self, index: int) -> int:
        return index % len(self.pixels)

    def __getitem__(self, index: int) -> Tensor:
        return self.pixels[self.image_index(index)]
