"""Tiny real models for the tests: real module layouts, small sizes, fixed seeds, built on CPU in milliseconds.

No hub access here, so every model is built from a config. Each builder seeds torch itself, so two calls give the
same weights.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
)

from peft_inits.diffusion import tiny as diffusion_tiny
from peft_inits.diffusion.tiny import SD_DOWN_BLOCKS, SD_UP_BLOCKS

SEED = 0


def tiny_roberta(num_labels: int = 2) -> RobertaForSequenceClassification:
    """RoBERTa classifier: hidden 32, 2 layers, 2 heads, intermediate 64, vocab 100."""
    torch.manual_seed(SEED)
    config = RobertaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return RobertaForSequenceClassification(config).eval()


def tiny_vit(num_labels: int = 3) -> ViTForImageClassification:
    """transformers ViT classifier (5.x naming ``vit.layers.{i}.attention.q_proj``): hidden 32, 2 layers, 16 px."""
    torch.manual_seed(SEED)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=8,
        num_channels=3,
        num_labels=num_labels,
    )
    return ViTForImageClassification(config).eval()


def tiny_llama() -> LlamaForCausalLM:
    """Llama decoder: hidden 32, 2 layers, 2 heads, intermediate 64, vocab 100."""
    torch.manual_seed(SEED)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def tiny_unet() -> UNet2DConditionModel:
    """SD-shaped UNet (4 down levels, cross-attention mid block, 4 up levels) with 8/16 channels, 8×8 latents.

    Inputs: sample (B, 4, 8, 8), a timestep, encoder_hidden_states (B, T, 16). The SD runner's embedded default uses
    the same builder.
    """
    return diffusion_tiny.tiny_unet(SEED)


def sd15_unet_meta() -> UNet2DConditionModel:
    """The real SD-1.5 UNet layout (860M parameters) on the meta device: module names and shapes, no memory."""
    with torch.device("meta"):
        return UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            down_block_types=SD_DOWN_BLOCKS,
            up_block_types=SD_UP_BLOCKS,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
        )


class _TimmAttention(nn.Module):
    """timm ``Attention``: one fused ``qkv`` Linear and an output ``proj``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(attended.transpose(1, 2).reshape(batch, tokens, dim))


class _TimmMlp(nn.Module):
    """timm ``Mlp``: ``fc1`` → GELU → ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class _TimmBlock(nn.Module):
    """timm pre-norm transformer ``Block``."""

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _TimmAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _TimmMlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _TimmPatchEmbed(nn.Module):
    """timm ``PatchEmbed``: a strided ``proj`` Conv2d, flattened to tokens."""

    def __init__(self, channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class TimmLikeViT(nn.Module):
    """A ViT with timm's module names (``patch_embed.proj``, ``blocks.{i}.attn.qkv``/``.proj``, ``mlp.fc1/fc2``,
    ``head``). timm itself is not installed here (it needs torchvision, which fails to import with this torch), so
    its naming is reproduced by hand to test the timm vocabulary."""

    def __init__(
        self, image_size: int = 16, patch: int = 8, channels: int = 3, dim: int = 32, depth: int = 2, classes: int = 3
    ) -> None:
        super().__init__()
        num_tokens = (image_size // patch) ** 2 + 1
        self.patch_embed = _TimmPatchEmbed(channels, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(_TimmBlock(dim, num_heads=2, hidden=2 * dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(images)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, 0]))


def timm_like_vit(num_labels: int = 3) -> TimmLikeViT:
    """timm-named ViT: hidden 32, 2 blocks, 16 px images, 8 px patches, 3 channels."""
    torch.manual_seed(SEED)
    return TimmLikeViT(classes=num_labels).eval()


def save_tiny_clip_and_dino(root, dino_layers: int = 1):
    """A width-16 CLIP (byte-level tokenizer, image projection) and a width-16 DINOv2, saved with their processors
    as local checkpoints `root/clip` and `root/dino` (the CLIP-I / CLIP-T / DINO code paths, offline)."""
    from transformers import (
        BitImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        Dinov2Config,
        Dinov2Model,
    )

    from peft_inits.diffusion.tiny import byte_level_tokenizer

    torch.manual_seed(SEED)
    tokenizer = byte_level_tokenizer(root / "tok")
    text = {"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": len(tokenizer) - 2,
            "eos_token_id": len(tokenizer) - 1, "pad_token_id": len(tokenizer) - 1}  # fmt: skip
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(root / "clip")
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(root / "clip")
    config = Dinov2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=dino_layers, num_attention_heads=2,
                          image_size=32, patch_size=8)  # fmt: skip
    Dinov2Model(config).save_pretrained(root / "dino")
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "dino")
    return root
