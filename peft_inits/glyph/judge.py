"""The glyph world's judge: a small CNN trained on *rendered* images to name each attribute of a scene.

It plays the roles CLIP and DINO play for real SD in DreamBooth-style evaluation: its heads give the probability of
a prompted attribute value (subject, typeface, variant, colour, background), its pooled features compare images
(subject similarity, diversity), and its first-stage feature maps give Gram matrices (style). It knows every value
of the world, held-out ones included, since it judges adapters trained on those. Images are blurred at random while
it trains, because generated images come through a VAE and are softer than renders.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .world import FONTS, HELD_OUT_FONTS, World, attribute_values

ATTRIBUTES = ("subject", "family", "variant", "colour", "background")


def attribute_classes() -> dict[str, tuple[str, ...]]:
    """Every value the judge names, per attribute: the training world's, then the held-out ones."""
    return {a: (*attribute_values(a), *attribute_values(a, held_out=True)) for a in ATTRIBUTES}


@dataclass(frozen=True)
class JudgeSettings:
    images: int = 16_000
    steps: int = 3_000
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 1_000  # a different world seed from pretraining (seed 0)
    max_blur: float = 0.9  # σ of the training blur is drawn from U(0, max_blur)
    architecture: str = "conv3-mean+layout4"  # part of the cache key: change it with the network


class Judge(nn.Module):
    """Three conv stages (32 → 16 → 8), then features = [global mean of the last maps (texture, colour); a linear map
    of their 4 × 4 average pool (layout: which glyph, where)], one linear head per attribute."""

    def __init__(self, classes: dict[str, tuple[str, ...]] | None = None, width: int = 32) -> None:
        super().__init__()
        self.classes = classes or attribute_classes()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU()]

        self.stages = nn.ModuleList(
            [
                nn.Sequential(*block(3, width)),
                nn.Sequential(*block(width, 2 * width), *block(2 * width, 2 * width)),
                nn.Sequential(*block(2 * width, 4 * width), *block(4 * width, 4 * width)),
            ]
        )
        self.layout = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 16, 4 * width), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(8 * width, len(values)) for name, values in self.classes.items()})

    def maps(self, pixels: Tensor) -> list[Tensor]:
        """Feature maps of each stage (before its pooling); pixels in [-1, 1], (N, 3, 32, 32)."""
        out, x = [], pixels
        for index, stage in enumerate(self.stages):
            x = stage(x)
            out.append(x)
            if index < len(self.stages) - 1:
                x = F.avg_pool2d(x, 2)
        return out

    def features(self, pixels: Tensor) -> Tensor:
        last = self.maps(pixels)[-1]
        return torch.cat([last.mean(dim=(2, 3)), self.layout(F.adaptive_avg_pool2d(last, 4))], dim=1)

    def forward(self, pixels: Tensor) -> dict[str, Tensor]:
        features = self.features(pixels)
        return {name: head(features) for name, head in self.heads.items()}


def judge_images(count: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rendered images over every attribute value: letters in every typeface, held-out symbols in the DejaVu ones."""
    classes = attribute_classes()
    everything = {"variants": classes["variant"], "colours": classes["colour"], "backgrounds": classes["background"]}
    letters = World(subjects=attribute_values("subject"), families=classes["family"], seed=seed, **everything)
    symbols = World(
        subjects=attribute_values("subject", held_out=True), families=tuple(FONTS), seed=seed + 1, **everything
    )
    share = count * len(attribute_values("subject")) // len(classes["subject"])
    first, first_scenes = letters.images(share)
    second, second_scenes = symbols.images(count - share)
    scenes = first_scenes + second_scenes
    labels = {a: np.array([classes[a].index(getattr(s, a)) for s in scenes]) for a in ATTRIBUTES}
    assert set(HELD_OUT_FONTS) <= set(classes["family"])
    return np.concatenate([first, second]), labels


def _blur(pixels: Tensor, generator: torch.Generator, max_sigma: float) -> Tensor:
    """Gaussian blur with σ ~ U(0, max_sigma) per batch (σ < 0.3 leaves the batch sharp)."""
    sigma = float(torch.rand((), generator=generator)) * max_sigma
    if sigma < 0.3:
        return pixels
    radius = torch.arange(-2, 3, dtype=pixels.dtype)
    kernel = torch.exp(-(radius**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.conv2d(F.pad(pixels, (2, 2, 0, 0), mode="replicate"), kernel.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), kernel.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)


def train_judge(settings: JudgeSettings | None = None, progress: bool = False) -> tuple[Judge, dict]:
    """Train a judge from scratch (seeded); returns it and its validation accuracy per attribute on fresh renders."""
    from tqdm.auto import tqdm

    from .pretrain import to_pixels

    settings = settings or JudgeSettings()
    images, labels = judge_images(settings.images, settings.seed)
    pixels = to_pixels(images)
    targets = {a: torch.from_numpy(v) for a, v in labels.items()}
    torch.manual_seed(settings.seed)
    judge = Judge()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=settings.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=settings.steps)
    generator = torch.Generator().manual_seed(settings.seed)
    judge.train()
    for _ in tqdm(range(settings.steps), disable=not progress, desc="judge"):
        index = torch.randint(len(pixels), (settings.batch_size,), generator=generator)
        logits = judge(_blur(pixels[index], generator, settings.max_blur))
        loss = sum(F.cross_entropy(logits[a], targets[a][index]) for a in ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    judge.eval()
    held, held_labels = judge_images(1_000, settings.seed + 10)
    report = accuracy(judge, to_pixels(held), held_labels)
    return judge, {"settings": asdict(settings), "validation_accuracy": report}


@torch.no_grad()
def accuracy(judge: Judge, pixels: Tensor, labels: dict[str, np.ndarray]) -> dict[str, float]:
    """Top-1 accuracy per attribute."""
    logits = {a: torch.cat(parts) for a, parts in _chunked(judge, pixels).items()}
    return {a: float((logits[a].argmax(1).numpy() == labels[a]).mean()) for a in labels}


def _chunked(judge: Judge, pixels: Tensor, chunk: int = 256) -> dict[str, list[Tensor]]:
    out: dict[str, list[Tensor]] = {a: [] for a in judge.classes}
    for part in pixels.split(chunk):
        for name, value in judge(part).items():
            out[name].append(value)
    return out


def save_judge(judge: Judge, report: dict, directory: str | Path) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(judge.state_dict(), str(directory / "judge.safetensors"))
    meta = {**report, "classes": judge.classes}
    (directory / "judge.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return directory


def load_judge(directory: str | Path) -> tuple[Judge, dict]:
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path, weights = directory / "judge.json", directory / "judge.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{directory} holds no judge (judge.json + judge.safetensors)")
    meta = json.loads(meta_path.read_text())
    judge = Judge({k: tuple(v) for k, v in meta["classes"].items()})
    judge.load_state_dict(load_file(str(weights)))
    return judge.eval().requires_grad_(False), meta


def cached_judge(cache_dir: str | Path, settings: JudgeSettings | None = None, progress: bool = False) -> Judge:
    """The judge for `settings`, trained once and kept in `cache_dir/judge-<hash>` (a minute on one CPU thread)."""
    import hashlib

    settings = settings or JudgeSettings()
    key = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:10]
    directory = Path(cache_dir) / f"judge-{key}"
    if (directory / "judge.json").is_file():
        return load_judge(directory)[0]
    judge, report = train_judge(settings, progress)
    save_judge(judge, report, directory)
    return judge
