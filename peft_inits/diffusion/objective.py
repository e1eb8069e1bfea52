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

from ..training.task import Task
from .images import CropDataset

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
    """Instance crops with their prompt, and class crops with theirs when prior preservation is on."""

    def __init__(
        self,
        instance: CropDataset,
        instance_prompt: str,
        frozen: Frozen,
        prior: CropDataset | None = None,
        class_prompt: str | None = None,
    ) -> None:
        if prior is not None and not class_prompt:
            raise ValueError("prior preservation needs a class prompt (e.g. 'a photo of a cat')")
        self.instance, self.prior = instance, prior
        self.instance_ids = frozen.tokens([instance_prompt])[0]
        self.class_ids = frozen.tokens([class_prompt])[0] if prior is not None else None

    def __len__(self) -> int:
        return len(self.instance)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        batch = {
            "pixels": torch.stack([self.instance[i] for i in indices]),
            "ids": self.instance_ids.expand(len(indices), -1).clone(),
        }
        if self.prior is not None:
            batch["prior_pixels"] = torch.stack([self.prior[i % len(self.prior)] for i in indices])
            batch["prior_ids"] = self.class_ids.expand(len(indices), -1).clone()
        return batch


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
    validation: CropDataset | None = None,
    validation_size: int = 8,
) -> Task:
    """The loop's Task: training loss as above; `evaluate` returns {'val_loss': …} on a fixed draw."""
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"prediction must be one of {PREDICTION_TYPES}, got {prediction!r}")

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        value = noise_loss(model, frozen, batch["pixels"], batch["ids"], prediction)
        if "prior_pixels" in batch:
            value = value + prior_weight * noise_loss(
                model, frozen, batch["prior_pixels"], batch["prior_ids"], prediction
            )
        return value

    held_out = validation or data.instance

    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        device = next(model.parameters()).device
        indices = list(range(len(held_out) - validation_size, len(held_out)))
        pixels = torch.stack([held_out[i] for i in indices]).to(device)
        ids = data.instance_ids.expand(len(indices), -1).to(device)
        generator = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            value = noise_loss(model, frozen, pixels, ids, prediction, generator=generator)
        return {"val_loss": float(value)}

    return Task(train=data, loss=loss, evaluate=evaluate, metric="val_loss", greater_is_better=False)
