"""The SD training task for the shared loop: noise-prediction loss on VAE latents, DreamBooth prior preservation.

The U-Net is the trained model; the VAE and text encoder stay frozen and run under `no_grad` inside the loss. The loss
is epsilon or v-prediction MSE (the scheduler's `prediction_type` unless overridden), plus `prior_weight` × the same
loss on class images when prior preservation is on. Validation is the same loss on a fixed held-out draw of crops,
timesteps and noise, so its curve is comparable across steps and runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..training.task import Task

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class Frozen:
    """The frozen parts of the pipeline the loss needs, moved once to the training device."""

    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler: Any

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> Frozen:
        for module in (self.vae, self.text_encoder):
            module.requires_grad_(False)
            if next(module.parameters()).dtype == dtype:  # a no-op cast would still warn in diffusers
                module.to(device=device)
            else:
                module.to(device=device, dtype=dtype)
        return self

    def tokens(self, prompts: Sequence[str]) -> Tensor:
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    @torch.no_grad()
    def latents(self, pixels: Tensor) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(pixels.to(dtype)).latent_dist
        return posterior.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def context(self, token_ids: Tensor) -> Tensor:
        return self.text_encoder(token_ids)[0]


class DreamBoothData:
    """Instance images with their prompts, and class images with theirs when prior preservation is on.

    A prompt is one string for every image of its set (a folder with one instance prompt), or one string per image
    (glyph-world concepts: each render is captioned); per-image prompts need a dataset with `image_index(i)`.
    """

    def __init__(
        self,
        instance: Dataset,
        instance_prompt: str | Sequence[str],
        frozen: Frozen,
        prior: Dataset | None = None,
        class_prompt: str | Sequence[str] | None = None,
    ) -> None:
        if prior is not None and not class_prompt:
            raise ValueError("prior preservation needs a class prompt (e.g. 'a photo of a cat')")
        self.instance, self.prior = instance, prior
        self.instance_ids = _prompt_ids(frozen, instance, instance_prompt, "instance")
        self.class_ids = _prompt_ids(frozen, prior, class_prompt, "class") if prior is not None else None

    def __len__(self) -> int:
        return len(self.instance)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        batch = {
            "pixels": torch.stack([self.instance[i] for i in indices]),
            "ids": _ids_for(self.instance, self.instance_ids, indices),
        }
        if self.prior is not None:
            prior_indices = [i % len(self.prior) for i in indices]
            batch["prior_pixels"] = torch.stack([self.prior[i] for i in prior_indices])
            batch["prior_ids"] = _ids_for(self.prior, self.class_ids, prior_indices)
        return batch


def _prompt_ids(frozen: Frozen, dataset: Dataset, prompt: str | Sequence[str], kind: str) -> Tensor:
    """Token ids (P, L): one row for a single prompt, one per image for per-image prompts."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if len(prompts) > 1:
        if not hasattr(dataset, "image_index"):
            raise ValueError(f"per-image {kind} prompts need a dataset that names its images (image_index)")
        count = dataset.image_count
        if count != len(prompts):
            raise ValueError(f"{len(prompts)} {kind} prompts for {count} {kind} images: give one per image")
    return frozen.tokens(prompts)


def _ids_for(dataset: Dataset, ids: Tensor, indices: Sequence[int]) -> Tensor:
    if len(ids) == 1:
        return ids.expand(len(indices), -1).clone()
    return ids[[dataset.image_index(i) for i in indices]]


def noise_loss(
    unet: nn.Module,
    frozen: Frozen,
    pixels: Tensor,
    ids: Tensor,
    prediction: str,
    generator: torch.Generator | None = None,
) -> Tensor:
    """MSE between the U-Net's prediction and its target (ε, or v = α·ε − σ·x₀) at random timesteps."""
    latents = frozen.latents(pixels)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device if generator is None else "cpu")
    noise = noise.to(latents)
    steps = frozen.scheduler.config.num_train_timesteps
    timesteps = torch.randint(
        0, steps, (latents.shape[0],), generator=generator, device=latents.device if generator is None else "cpu"
    ).to(latents.device)
    noisy = frozen.scheduler.add_noise(latents, noise, timesteps)
    target = noise if prediction == "epsilon" else frozen.scheduler.get_velocity(latents, noise, timesteps)
    predicted = unet(noisy, timesteps, encoder_hidden_states=frozen.context(ids)).sample
    return F.mse_loss(predicted.float(), target.float())


def diffusion_task(
    data: DreamBoothData,
    frozen: Frozen,
    *,
    prediction: str,
    prior_weight: float = 1.0,
    validation: DreamBoothData | None = None,
    validation_size: int = 8,
) -> Task:
    """The loop's Task: training loss as above; `evaluate` returns {'val_loss': …} on a fixed draw of `validation`
    (its own images and prompts; default: the last instance items)."""
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"prediction must be one of {PREDICTION_TYPES}, got {prediction!r}")

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        value = noise_loss(model, frozen, batch["pixels"], batch["ids"], prediction)
        if "prior_pixels" in batch:
            value = value + prior_weight * noise_loss(
                model, frozen, batch["prior_pixels"], batch["prior_ids"], prediction
            )
        return value

    held_out = validation or data

    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        device = next(model.parameters()).device
        size = min(validation_size, len(held_out))
        batch = held_out.batch(list(range(len(held_out) - size, len(held_out))))
        pixels, ids = batch["pixels"].to(device), batch["ids"].to(device)
        generator = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            value = noise_loss(model, frozen, pixels, ids, prediction, generator=generator)
        return {"val_loss": float(value)}

    return Task(train=data, loss=loss, evaluate=evaluate, metric="val_loss", greater_is_better=False)
