"""A tiny SD-shaped pipeline built from configs: it exercises the real code paths on a CPU, not image quality.

The U-Net keeps SD-1.x's real block structure (4 down levels, a cross-attention mid block, 4 up levels), so block
selection (`in0` … `out3`, `upper`, …) addresses it exactly as it addresses SD-1.5. The VAE downsamples by 8 like SD's,
the text encoder is a small CLIP with a byte-level tokenizer written locally (no hub, no vocabulary download).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

TINY = "tiny"  # the name `--model` and `load_pipeline` take for this pipeline
SD_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
SD_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
TEXT_WIDTH = 16
MAX_TOKENS = 32


def tiny_unet(seed: int = 0):
    """SD-1.x block layout with 8/16 channels; latents 4 × 8 × 8, text context width 16."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=SD_DOWN_BLOCKS,
        up_block_types=SD_UP_BLOCKS,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=2,
    ).eval()


def tiny_vae(seed: int = 0):
    """AutoencoderKL with 4 levels (÷8, as SD's): a 64 × 64 image ↔ 4 × 8 × 8 latents."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    ).eval()


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte → printable-character table (256 symbols)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    codes = printable + [256 + i for i in range(len(extra))]
    order = printable + extra
    return [chr(code) for _, code in sorted(zip(order, codes, strict=True))]


def byte_level_tokenizer(directory: str | Path | None = None):
    """A CLIPTokenizer over single bytes (no merges): 514 tokens, any text, nothing downloaded."""
    from transformers import CLIPTokenizer

    directory = Path(directory or tempfile.mkdtemp(prefix="tiny-clip-tokenizer-"))
    directory.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate([*symbols, *(s + "</w>" for s in symbols)])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=MAX_TOKENS)


def tiny_text_encoder(vocab_size: int, seed: int = 0):
    """CLIP text transformer of width 16 (the U-Net's cross-attention width)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config).eval()


def tiny_pipeline(seed: int = 0):
    """StableDiffusionPipeline with the tiny parts and SD's training noise schedule (1000 steps, scaled linear)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    tokenizer = byte_level_tokenizer()
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(len(tokenizer), seed),
        tokenizer=tokenizer,
        unet=tiny_unet(seed),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
