"""What an SD adapter trains on: DreamBooth data with validation, references and sample prompts.

`TrainingSet` is the one shape every source fills; this module fills it from photos — the scikit-image sets
(`subject`, `style`) or a folder — as random crops under one instance prompt, with prior preservation on class images
sampled once from the base model when a class prompt is given. Glyph-world concepts fill it in `glyph.trainset`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .images import EMBEDDED_SETS, CropDataset, embedded_images, load_image_folder, resize_short_side
from .objective import DreamBoothData, Frozen
from .sampling import generate

EMBEDDED_PROMPTS = {"subject": "a photo of sks cat", "style": "a wall in sks style"}


@dataclass
class TrainingSet:
    data: DreamBoothData
    validation: DreamBoothData
    references: list  # PIL images the samples are compared with (the training images)
    prompts: list[Any]  # what the final samples are prompted with: text, or prompts that know their text
    record: dict = field(default_factory=dict)  # what config.json records about the data


def is_photo_source(data: str) -> bool:
    return data in EMBEDDED_SETS or Path(data).is_dir()


@dataclass(frozen=True)
class PhotoData:
    """Photos to train on: an embedded set (`subject`, `style`) or a folder, under one instance prompt."""

    source: str
    instance_prompt: str | None = None  # default for the embedded sets: EMBEDDED_PROMPTS
    class_prompt: str | None = None  # enables prior preservation on images the base model samples once
    num_class_images: int | None = None  # default 4
    folder_size: int | None = None  # a folder's images are checked against (and resized to) this size
    prompts: tuple[str, ...] | None = None  # final sample prompts (default: the instance prompt)


def photo_training_set(
    pipe, photos: PhotoData, frozen: Frozen, resolution: int, run_dir: Path, *, length: int, seed: int, sample: Any,
    progress: bool = True,
) -> TrainingSet:  # fmt: skip
    """Random crops of the photos; class images (with a class prompt) are sampled with `sample`'s steps and guidance
    and kept in `run_dir/class_images`."""
    if photos.source in EMBEDDED_SETS:
        images = embedded_images(photos.source, resolution)
        prompt = photos.instance_prompt or EMBEDDED_PROMPTS[photos.source]
    elif not photos.instance_prompt:
        raise ValueError("training on your own images needs --instance-prompt (e.g. 'a photo of sks dog')")
    else:
        images, prompt = load_image_folder(photos.source, photos.folder_size), photos.instance_prompt
    instance = CropDataset(images, resolution, length=length, seed=seed)
    prior = None
    if photos.class_prompt:
        run_dir.mkdir(parents=True, exist_ok=True)
        class_images = _class_images(pipe, photos, run_dir, resolution, sample, progress)
        prior = CropDataset(class_images, resolution, length=length, seed=seed + 1)
    data = DreamBoothData(instance, prompt, frozen, prior, photos.class_prompt)
    validation = DreamBoothData(CropDataset(images, resolution, length=64, seed=seed + 99), prompt, frozen)
    references = [CropDataset(images, resolution, length=8, seed=seed + 7)[i] for i in range(8)]
    record = {"prompt": prompt, "class_prompt": photos.class_prompt}
    prompts = list(photos.prompts or [prompt])
    return TrainingSet(data, validation, [_tensor_to_pil(t) for t in references], prompts, record)


def prompt_texts(prompts: list[Any]) -> list[str]:
    """The text of each prompt (glyph prompts carry theirs in `.text`)."""
    return [getattr(p, "text", p) for p in prompts]


def _class_images(pipe, photos: PhotoData, run_dir: Path, resolution: int, sample: Any, progress: bool) -> list:
    """Class images for prior preservation, generated once by the base model and kept in the run directory."""
    folder = run_dir / "class_images"
    count = photos.num_class_images or 4
    existing = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if len(existing) >= count:
        return load_image_folder(folder, resolution)
    rows = generate(
        pipe, [photos.class_prompt], list(range(count)), steps=sample.steps, guidance=sample.guidance,
        progress=progress,
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(rows[0]):
        image.save(folder / f"class-{i:03d}.png")
    return [resize_short_side(image, resolution) if min(image.size) < resolution else image for image in rows[0]]


def _tensor_to_pil(pixels):
    from PIL import Image

    array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array)
