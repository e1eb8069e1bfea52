"""What `sd.py train` trains on: DreamBooth data for each kind of `--data`, with validation, references and prompts.

- `glyph:ATTR=VALUE` (glyph-world concept, see .concepts): captioned renders, prior preservation on renders of the
  training world in the base wording (on unless `--prior-weight 0`), sample prompts that ask for the concept in new
  scenes, so prompt fidelity can be judged.
- `subject` / `style` (real photos from scikit-image) or a folder: random crops under one instance prompt; prior
  preservation with `--class-prompt`, on class images sampled once from the base model.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from .concepts import GlyphConcept, Prompt, concept_prompts, is_glyph
from .images import EMBEDDED_SETS, CropDataset, FixedImages, embedded_images, load_image_folder, resize_short_side
from .objective import DreamBoothData, Frozen
from .sampling import generate
from .world import to_pil

EMBEDDED_PROMPTS = {"subject": "a photo of sks cat", "style": "a wall in sks style"}
VALIDATION_SEED = 99  # world seed offset of validation renders


@dataclass
class TrainingSet:
    data: DreamBoothData
    validation: DreamBoothData
    references: list  # PIL images the samples are compared with (the training images)
    prompts: list[Prompt | str]  # what the final samples are prompted with
    record: dict = field(default_factory=dict)  # what config.json records about the data


def check_data(data: str) -> None:
    """Refuse a --data that is neither a glyph concept, an embedded set nor a folder before anything is loaded."""
    if is_glyph(data):
        GlyphConcept.parse(data)
        return
    if data not in EMBEDDED_SETS and not Path(data).is_dir():
        raise FileNotFoundError(
            f"--data {data!r} does not exist: pass an embedded set ({', '.join(EMBEDDED_SETS)}), "
            "a glyph-world concept (glyph:subject=♣, glyph:background=rings) or an image folder"
        )


def training_set(pipe, args: argparse.Namespace, frozen: Frozen, resolution: int, run_dir: Path) -> TrainingSet:
    length = max(args.steps * args.batch_size, 64)
    if is_glyph(args.data):
        return _glyph_set(args, frozen, resolution, length)
    return _photo_set(pipe, args, frozen, resolution, run_dir, length)


def _glyph_set(args: argparse.Namespace, frozen: Frozen, resolution: int, length: int) -> TrainingSet:
    concept = GlyphConcept.parse(args.data, args.token)
    images, captions, scenes = concept.instance(args.num_images, resolution, seed=args.seed)
    prior = class_captions = None
    if args.prior_weight > 0:
        count = args.num_class_images or args.num_images
        prior_images, class_captions = concept.prior((scenes * count)[:count], resolution, seed=args.seed)
        prior = FixedImages(prior_images, length)
    data = DreamBoothData(FixedImages(images, length), captions, frozen, prior, class_captions)
    held, held_captions, _ = concept.instance(8, resolution, seed=args.seed + VALIDATION_SEED)
    validation = DreamBoothData(FixedImages(held), held_captions, frozen)
    prompts: list[Prompt | str] = list(args.prompts or concept_prompts([concept], args.num_prompts))
    record = {"concept": concept.spec, "token": concept.token, "prompt": captions[0], "class_prompt": class_captions
              and class_captions[0], "images": args.num_images}  # fmt: skip
    return TrainingSet(data, validation, [to_pil(a) for a in images], prompts, record)


def _photo_set(
    pipe, args: argparse.Namespace, frozen: Frozen, resolution: int, run_dir: Path, length: int
) -> TrainingSet:
    if args.data in EMBEDDED_SETS:
        images, prompt = embedded_images(args.data, resolution), args.instance_prompt or EMBEDDED_PROMPTS[args.data]
    elif not args.instance_prompt:
        raise ValueError("training on your own images needs --instance-prompt (e.g. 'a photo of sks dog')")
    else:
        images, prompt = load_image_folder(args.data, args.resolution), args.instance_prompt
    instance = CropDataset(images, resolution, length=length, seed=args.seed)
    prior = None
    if args.class_prompt:
        run_dir.mkdir(parents=True, exist_ok=True)
        prior = CropDataset(
            _class_images(pipe, args, run_dir, resolution), resolution, length=length, seed=args.seed + 1
        )
    data = DreamBoothData(instance, prompt, frozen, prior, args.class_prompt)
    validation = DreamBoothData(CropDataset(images, resolution, length=64, seed=args.seed + 99), prompt, frozen)
    references = [CropDataset(images, resolution, length=8, seed=args.seed + 7)[i] for i in range(8)]
    record = {"prompt": prompt, "class_prompt": args.class_prompt}
    return TrainingSet(
        data, validation, [_tensor_to_pil(t) for t in references], list(args.prompts or [prompt]), record
    )


def _class_images(pipe, args: argparse.Namespace, run_dir: Path, resolution: int) -> list:
    """Class images for prior preservation, generated once by the base model and kept in the run directory."""
    folder = run_dir / "class_images"
    count = args.num_class_images or 4
    existing = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if len(existing) >= count:
        return load_image_folder(folder, resolution)
    rows = generate(
        pipe, [args.class_prompt], list(range(count)), steps=args.sample_steps, guidance=args.guidance,
        progress=args.progress,
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(rows[0]):
        image.save(folder / f"class-{i:03d}.png")
    return [resize_short_side(image, resolution) if min(image.size) < resolution else image for image in rows[0]]


def _tensor_to_pil(pixels):
    array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return to_pil(array)
