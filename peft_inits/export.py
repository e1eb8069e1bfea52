"""Export any adapter (LoRA, SVFit, LoLDU) as a standard LoRA: PEFT's LoRA format or kohya/A1111 safetensors.

SVFit and LoLDU deltas have rank ≤ r by construction, so `functional.lora_pair` turns each into an exact (A, B) pair
with B·A = ΔW; every tool that loads LoRAs (diffusers' `load_lora_weights`, ComfyUI, A1111) can then use them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from . import functional as Fn
from .checkpoint import save_tensors, write_adapter_dir
from .layers import AdapterLayer

_WRAPPER_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoRAPair:
    """One module's exact LoRA factors, shaped as the module type expects (Linear or Conv2d)."""

    name: str
    A: Tensor  # r × n, or r × in × kh × kw for Conv2d
    B: Tensor  # m × r, or m × r × 1 × 1 for Conv2d

    @property
    def rank(self) -> int:
        return self.A.shape[0]


def lora_pairs(model: nn.Module, adapter_name: str = "default") -> list[LoRAPair]:
    """The exact (A, B) of every layer holding `adapter_name`, named as in the base model (scale folded into B)."""
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, AdapterLayer) or adapter_name not in module.pi_adapters:
            continue
        adapter = module.adapter(adapter_name)
        down, gain, up = adapter.factors()
        with torch.no_grad():
            A, B = Fn.lora_pair(down, gain, up, adapter.scale)
        base = module.get_base_layer()
        if isinstance(base, nn.Conv2d):
            if base.dilation != (1, 1):
                raise ValueError(f"{name}: dilated convs have no standard LoRA form (PEFT and kohya ignore dilation)")
            A = A.reshape(A.shape[0], base.in_channels, *base.kernel_size)
            B = B[:, :, None, None]
        pairs.append(LoRAPair(name.removeprefix(_WRAPPER_PREFIX), A.float().contiguous(), B.float().contiguous()))
    if not pairs:
        raise ValueError(f"the model holds no adapter named {adapter_name!r} to export")
    return pairs


def export_peft_lora(model: nn.Module, directory: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Write a PEFT LoRA adapter (`LoraConfig` + `lora_A`/`lora_B` weights) that `PeftModel.from_pretrained` loads.

    Ranks may differ per module (block-wise adapters): they go to `rank_pattern`, and alpha = rank everywhere because
    the scale is already folded into B. The directory is replaced as a whole (a kill leaves the old or the new export).
    """
    from peft import LoraConfig

    pairs = lora_pairs(model, adapter_name)
    ranks = {p.name: p.rank for p in pairs}
    top = max(ranks.values())
    config = LoraConfig(
        r=top,
        lora_alpha=top,
        target_modules=sorted(ranks),
        rank_pattern={f"^{name}$": r for name, r in ranks.items() if r != top},
        alpha_pattern={f"^{name}$": r for name, r in ranks.items() if r != top},
    )
    tensors = {}
    for pair in pairs:
        tensors[f"{_WRAPPER_PREFIX}{pair.name}.lora_A.weight"] = pair.A
        tensors[f"{_WRAPPER_PREFIX}{pair.name}.lora_B.weight"] = pair.B
    return write_adapter_dir(directory, tensors, config.to_dict())


def kohya_key(module_name: str, prefix: str = "lora_unet") -> str:
    """kohya/A1111 key stem: `down_blocks.0.attentions.0.proj_in` → `lora_unet_down_blocks_0_attentions_0_proj_in`."""
    return f"{prefix}_{module_name.replace('.', '_')}"


def export_kohya(
    model: nn.Module, path: str | os.PathLike, adapter_name: str = "default", prefix: str = "lora_unet"
) -> Path:
    """Write one kohya-format safetensors file (`.lora_down.weight`, `.lora_up.weight`, `.alpha` = rank)."""
    tensors: dict[str, Tensor] = {}
    for pair in lora_pairs(model, adapter_name):
        stem = kohya_key(pair.name, prefix)
        tensors[f"{stem}.lora_down.weight"] = pair.A
        tensors[f"{stem}.lora_up.weight"] = pair.B
        tensors[f"{stem}.alpha"] = torch.tensor(float(pair.rank))
    path = Path(path)
    save_tensors(tensors, path, metadata={"format": "pt", "ss_network_module": "networks.lora"})
    return path
