"""Export any adapter as a standard LoRA in three layouts: PEFT's, diffusers' and kohya/A1111's.

Every method's delta has a known rank, so `functional.lora_pair` turns it into an exact (A, B) pair with
B·A = ΔW. One alpha convention serves every consumer whatever the per-block ranks: alpha = the largest rank R for
every module, and B is multiplied by r_i / R so that (R / r_i)·B·A is ΔW again. Loaders that take a single alpha
(diffusers turns per-module kohya alphas into an `alpha_pattern` whose keys match nothing) and loaders that read one
alpha per module (kohya, A1111, ComfyUI) then all reproduce ΔW exactly.

Layouts: `export_peft_lora` (adapter_config.json + adapter_model.safetensors; `PeftModel.from_pretrained(base, dir)`),
`export_diffusers_lora` (pytorch_lora_weights.safetensors with `unet.` keys, as `save_lora_weights` writes;
`pipe.load_lora_weights(dir)`), `export_kohya` (one file, `lora_unet_…` keys and `.alpha`; A1111, ComfyUI, diffusers).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from . import functional as Fn
from .checkpoint import save_tensors, write_adapter_dir
from .layers import AdapterLayer

_WRAPPER_PREFIX = "base_model.model."
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes and loads
LAYOUTS = ("peft", "diffusers", "kohya")
PEFT_README = """# LoRA export in PEFT's layout (peft_inits)

Load it with PEFT onto the base model it was trained on:

    from peft import PeftModel
    model = PeftModel.from_pretrained(base_model, "{directory}")

diffusers' `pipe.load_lora_weights` does not read this layout: its keys lack the `unet.` prefix, so diffusers logs
"No LoRA keys associated to UNet2DConditionModel found" and loads nothing (measured with diffusers 0.42). For
diffusers, export with `export_diffusers_lora` (SD runner: `export --format diffusers`), which writes
`{weight_name}` exactly as `StableDiffusionPipeline.save_lora_weights` does.
"""


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


def single_alpha_pairs(pairs: list[LoRAPair]) -> tuple[list[LoRAPair], int]:
    """The pairs rescaled for one alpha = the largest rank R (B·r/R, so that scale R/r restores ΔW), and R."""
    top = max(p.rank for p in pairs)
    return [LoRAPair(p.name, p.A, (p.B * (p.rank / top)).contiguous()) for p in pairs], top


def _lora_config_dict(pairs: list[LoRAPair], top: int) -> dict:
    """LoraConfig fields for the single-alpha convention: r = lora_alpha = R, the other ranks in `rank_pattern`."""
    return {
        "r": top,
        "lora_alpha": top,
        "target_modules": sorted(p.name for p in pairs),
        "rank_pattern": {f"^{p.name}$": p.rank for p in pairs if p.rank != top},
    }


def export_peft_lora(model: nn.Module, directory: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Write a PEFT LoRA adapter (`LoraConfig` + `lora_A`/`lora_B` weights) that `PeftModel.from_pretrained` loads.

    Ranks may differ per module (block-wise adapters): they go to `rank_pattern`, with one alpha (module docstring).
    A README.md in the folder says how to load it (and that diffusers' `load_lora_weights` wants the diffusers layout).
    The directory is replaced as a whole (a kill leaves the old or the new export).
    """
    from peft import LoraConfig

    pairs, top = single_alpha_pairs(lora_pairs(model, adapter_name))
    config = LoraConfig(**_lora_config_dict(pairs, top))
    tensors = {}
    for pair in pairs:
        tensors[f"{_WRAPPER_PREFIX}{pair.name}.lora_A.weight"] = pair.A
        tensors[f"{_WRAPPER_PREFIX}{pair.name}.lora_B.weight"] = pair.B
    metadata = {"peft_inits_layout": "peft", "load_with": "peft.PeftModel.from_pretrained(base, dir)"}
    readme = PEFT_README.format(directory=Path(directory), weight_name=DIFFUSERS_WEIGHT_NAME)
    return write_adapter_dir(directory, tensors, config.to_dict(), metadata=metadata, texts={"README.md": readme})


def kohya_key(module_name: str, prefix: str = "lora_unet") -> str:
    """kohya/A1111 key stem: `down_blocks.0.attentions.0.proj_in` → `lora_unet_down_blocks_0_attentions_0_proj_in`."""
    return f"{prefix}_{module_name.replace('.', '_')}"


def export_diffusers_lora(
    model: nn.Module, directory: str | os.PathLike, adapter_name: str = "default", prefix: str = "unet"
) -> Path:
    """Write what `StableDiffusionPipeline.save_lora_weights` writes: `pytorch_lora_weights.safetensors` with
    `unet.<module>.lora_A/B.weight` keys and the LoraConfig in the `lora_adapter_metadata` header, so
    `pipe.load_lora_weights(dir)` and `unet.load_lora_adapter(dir, prefix="unet")` load it exactly. Returns the file."""
    pairs, top = single_alpha_pairs(lora_pairs(model, adapter_name))
    tensors: dict[str, Tensor] = {}
    for pair in pairs:
        tensors[f"{prefix}.{pair.name}.lora_A.weight"] = pair.A
        tensors[f"{prefix}.{pair.name}.lora_B.weight"] = pair.B
    config = {f"{prefix}.{key}": value for key, value in _lora_config_dict(pairs, top).items()}
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(config, indent=2, sort_keys=True)}
    path = Path(directory) / DIFFUSERS_WEIGHT_NAME
    save_tensors(tensors, path, metadata=metadata)
    return path


def export_kohya(
    model: nn.Module, path: str | os.PathLike, adapter_name: str = "default", prefix: str = "lora_unet"
) -> Path:
    """Write one kohya-format safetensors file (`.lora_down.weight`, `.lora_up.weight`, `.alpha` = the largest
    rank for every module, the per-module scale folded into the up factor)."""
    tensors: dict[str, Tensor] = {}
    pairs, top = single_alpha_pairs(lora_pairs(model, adapter_name))
    for pair in pairs:
        stem = kohya_key(pair.name, prefix)
        tensors[f"{stem}.lora_down.weight"] = pair.A
        tensors[f"{stem}.lora_up.weight"] = pair.B
        tensors[f"{stem}.alpha"] = torch.tensor(float(top))
    path = Path(path)
    save_tensors(tensors, path, metadata={"format": "pt", "ss_network_module": "networks.lora"})
    return path
