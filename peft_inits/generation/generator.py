"""The weight generator: a conditional diffusion model over an adapter's layer tokens (DiffLoRA, arXiv 2408.06740).

Tokens: one per adapted layer (the `Codec`'s normalised trained values or latent, padded to the widest layer, plus a
learned layer embedding), one per feature source (its normalised reference-image features through a small MLP) and
one for the diffusion time. A pre-norm transformer encoder mixes them; the layer tokens' outputs are the prediction
(ε by default). Classifier-free guidance: during training every condition token is replaced by a learned null token
with probability `condition_dropout`; sampling runs DDIM (diffusers' `DDIMScheduler` on the training schedule) with
ε = ε_null + g · (ε_cond − ε_null).

Training goes through `training.run.execute` (method `full`), so it is seeded, logged, checkpointed and resumable
exactly like every other run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..training.fields import setting
from ..training.task import Task

PREDICTIONS = ("epsilon", "sample", "v_prediction")


@dataclass(frozen=True)
class GeneratorSettings:
    """Architecture and diffusion of the generator (recorded with it; a resumed run must keep them)."""

    width: int = setting(128, "transformer width")
    depth: int = setting(4, "transformer layers")
    heads: int = 4
    latent: int = setting(16, "per-layer latent size (PCA) of layers wider than this")
    condition_dropout: float = setting(0.1, "probability of the null condition in training (for guidance)")
    reference_keep: float = setting(
        0.7, "each reference image joins a training condition with this probability (at least one does)"
    )
    prediction: str = setting("epsilon", choices=PREDICTIONS)
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}")
        if not 0.0 < self.reference_keep <= 1.0:
            raise ValueError(f"reference_keep must be in (0, 1], got {self.reference_keep}")


def timestep_embedding(t: Tensor, width: int) -> Tensor:
    """Sinusoidal embedding of integer timesteps (B,) → (B, width)."""
    half = width // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Denoiser(nn.Module):
    """Transformer over [time, condition tokens…, layer tokens…] predicting the noise of the layer tokens."""

    def __init__(self, layers: int, token_width: int, sources: Mapping[str, int], settings: GeneratorSettings):
        super().__init__()
        d = settings.width
        self.settings = settings
        self.source_names = list(sources)
        self.inp = nn.Linear(token_width, d)
        self.layer_embedding = nn.Parameter(torch.randn(layers, d) * 0.02)
        self.conditions = nn.ModuleDict(
            {_key(n): nn.Sequential(nn.Linear(dim, d), nn.SiLU(), nn.Linear(d, d)) for n, dim in sources.items()}
        )
        self.null = nn.Parameter(torch.randn(len(sources), d) * 0.02)
        self.source_embedding = nn.Parameter(torch.randn(len(sources), d) * 0.02)
        self.time = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        block = nn.TransformerEncoderLayer(
            d, settings.heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(block, settings.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, token_width)

    def forward(self, x: Tensor, t: Tensor, conditions: Mapping[str, Tensor], drop: Tensor | None = None) -> Tensor:
        """x (B, L, W), t (B,), conditions name → (B, D); `drop` (B,) bool swaps the conditions for the null tokens."""
        batch = len(x)
        tokens = [self.time(timestep_embedding(t, self.settings.width))[:, None]]
        for index, name in enumerate(self.source_names):
            token = self.conditions[_key(name)](conditions[name].float())
            if drop is not None:
                token = torch.where(drop[:, None], self.null[index].expand(batch, -1), token)
            tokens.append((token + self.source_embedding[index])[:, None])
        tokens.append(self.inp(x) + self.layer_embedding)
        hidden = self.encoder(torch.cat(tokens, dim=1))
        return self.out(self.norm(hidden[:, 1 + len(self.source_names) :]))


def _key(name: str) -> str:
    return name.replace("-", "_")


def noise_schedule(settings: GeneratorSettings):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=settings.train_timesteps,
        beta_schedule=settings.beta_schedule,
        prediction_type=settings.prediction,
        clip_sample=False,
    )


def _target(scheduler, x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        return noise
    if prediction == "sample":
        return x
    return scheduler.get_velocity(x, noise, t)


def masked_mse(predicted: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    weights = mask.expand_as(predicted)
    return ((predicted - target) ** 2 * weights).sum() / weights.sum()


class TokenRows:
    """Training rows: layer tokens and each source's condition, indexed by the loop's sampler.

    With per-image features (`images`: name → (N, R, D), `counts`: real images per row) each batch row's condition
    is the mean over a random subset of its references (each kept with probability `keep`, at least one), so the
    generator also learns from conditions of fewer images, as a user may give; `conditions` (all images) is what
    validation uses.
    """

    def __init__(
        self,
        tokens: Tensor,
        conditions: Mapping[str, Tensor],
        images: Mapping[str, Tensor] | None = None,
        counts: Tensor | None = None,
        keep: float = 1.0,
    ) -> None:
        self.tokens = tokens
        self.conditions = dict(conditions)
        self.images = None if images is None else dict(images)
        self.counts = counts
        self.keep = keep

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, indices: Sequence[int]) -> dict[str, object]:
        index = torch.as_tensor(list(indices))
        if self.images is None or self.counts is None or self.keep >= 1.0:
            conditions = {n: c[index] for n, c in self.conditions.items()}
        else:
            width = next(iter(self.images.values())).shape[1]
            valid = torch.arange(width)[None] < self.counts[index][:, None]
            chosen = (torch.rand(len(index), width) < self.keep) & valid
            chosen = torch.where(chosen.any(1, keepdim=True), chosen, valid)
            weights = chosen.float() / chosen.sum(1, keepdim=True)
            conditions = {n: (f[index] * weights[..., None]).sum(1) for n, f in self.images.items()}
        return {"tokens": self.tokens[index], "conditions": conditions}


def generator_task(
    train: TokenRows, validation: TokenRows, mask: Tensor, settings: GeneratorSettings, seed: int = 1234
) -> Task:
    """Denoising loss at uniform timesteps with condition dropout; validation: the same loss without dropout on a
    fixed draw of noise and timesteps (several draws per row, so a handful of held-out adapters gives a stable
    number)."""
    scheduler = noise_schedule(settings)
    steps = settings.train_timesteps

    def loss(model: nn.Module, batch: dict) -> Tensor:
        x = batch["tokens"]
        noise = torch.randn_like(x) * mask
        t = torch.randint(0, steps, (len(x),))
        drop = torch.rand(len(x)) < settings.condition_dropout
        predicted = model(scheduler.add_noise(x, noise, t), t, batch["conditions"], drop)
        return masked_mse(predicted, _target(scheduler, x, noise, t), mask)

    repeats = 8
    generator = torch.Generator().manual_seed(seed)
    x = validation.tokens.repeat(repeats, 1, 1)
    conditions = {n: c.repeat(repeats, 1) for n, c in validation.conditions.items()}
    fixed_noise = torch.randn(x.shape, generator=generator) * mask
    fixed_t = torch.randint(0, steps, (len(x),), generator=generator)

    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        predicted = model(scheduler.add_noise(x, fixed_noise, fixed_t), fixed_t, conditions)
        return {"val_loss": float(masked_mse(predicted, _target(scheduler, x, fixed_noise, fixed_t), mask))}

    return Task(train=train, loss=loss, evaluate=evaluate, metric="val_loss", greater_is_better=False)


@torch.no_grad()
def sample_tokens(
    model: Denoiser,
    conditions: Mapping[str, Tensor],
    mask: Tensor,
    *,
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    clip: float | None = None,
    progress: bool = False,
) -> Tensor:
    """DDIM (η = 0) samples, one per condition row, with classifier-free guidance `guidance` (1: conditional only,
    0: unconditional). `clip` bounds each step's predicted clean tokens to ±clip (the training tokens' range, with a
    margin: in normalised units anything beyond it is no adapter the data set resembles). Returns (B, L, W) tokens,
    zero on the padding."""
    from diffusers import DDIMScheduler
    from tqdm.auto import tqdm

    model.eval()
    extra = {} if clip is None else {"clip_sample": True, "clip_sample_range": float(clip)}
    scheduler = DDIMScheduler.from_config(noise_schedule(model.settings).config, **extra)
    scheduler.set_timesteps(steps)
    batch = len(next(iter(conditions.values())))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *mask.shape), generator=generator) * mask
    both = {n: torch.cat([c, c]) for n, c in conditions.items()}
    drop = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)])
    for t in tqdm(scheduler.timesteps, desc="sampling adapter", disable=not progress):
        times = torch.full((2 * batch,), int(t), dtype=torch.long)
        conditional, unconditional = model(torch.cat([x, x]), times, both, drop).chunk(2)
        predicted = unconditional + guidance * (conditional - unconditional)
        x = scheduler.step(predicted, t, x).prev_sample * mask
    return x


class FeatureNormaliser:
    """Per-dimension mean/std of each source's conditions over the training subjects (stored with the generator)."""

    def __init__(self, means: Mapping[str, Tensor], stds: Mapping[str, Tensor]) -> None:
        self.means, self.stds = dict(means), dict(stds)

    @classmethod
    def fit(cls, conditions: Mapping[str, Tensor]) -> FeatureNormaliser:
        means = {n: c.double().mean(0) for n, c in conditions.items()}
        stds = {}
        for name, c in conditions.items():
            std = c.double().std(0) if len(c) > 1 else torch.ones(c.shape[1], dtype=torch.float64)
            stds[name] = torch.where(std > 1e-8, std, torch.ones_like(std))
        return cls(means, stds)

    def __call__(self, conditions: Mapping[str, Tensor]) -> dict[str, Tensor]:
        missing = sorted(set(self.means) - set(conditions))
        if missing:
            raise ValueError(f"conditions lack the feature source(s) {missing} the generator was trained with")
        return {name: self.one(name, conditions[name]) for name in self.means}

    def one(self, name: str, value: Tensor) -> Tensor:
        """One source's features (…, D) in normalised units."""
        value = value.double()
        if value.shape[-1] != self.means[name].shape[0]:
            raise ValueError(
                f"feature source {name!r} gives {value.shape[-1]} values but the generator was trained on "
                f"{self.means[name].shape[0]}: a different feature extractor?"
            )
        return ((value - self.means[name]) / self.stds[name]).float()

    def tensors(self) -> dict[str, Tensor]:
        return {**{f"mean.{n}": v for n, v in self.means.items()}, **{f"std.{n}": v for n, v in self.stds.items()}}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], names: Sequence[str]) -> FeatureNormaliser:
        try:
            return cls({n: tensors[f"mean.{n}"] for n in names}, {n: tensors[f"std.{n}"] for n in names})
        except KeyError as exc:
            raise ValueError(f"the feature statistics lack {exc.args[0]}") from exc


def distance_to(samples: Tensor, centre: Tensor, mask: Tensor) -> Tensor:
    """RMS distance of each sample's real coordinates to `centre` (for tests and diagnostics)."""
    weights = mask.expand_as(samples)
    return (((samples - centre) ** 2 * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2))).sqrt()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "Denoiser",
    "FeatureNormaliser",
    "GeneratorSettings",
    "TokenRows",
    "count_parameters",
    "distance_to",
    "generator_task",
    "masked_mse",
    "sample_tokens",
]
