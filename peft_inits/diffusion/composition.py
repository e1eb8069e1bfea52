"""Composition of adapters on one U-Net: an identity adapter everywhere plus a style adapter on chosen blocks.

The Block-wise LoRA ablation (arXiv 2403.07500): ID only, style only, ID + style on all blocks, and ID + style only on
`upper` (in0 + out3), `middle` (in1 + out2) or `lower` (in2 + out1). Adapters of any type are loaded side by side
under their own names; each layer's active set and each adapter's weight are then switched without reloading.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from peft import set_peft_model_state_dict
from torch import nn

from ..blocks import select_blocks
from ..checkpoint import read_config, verify_adapter_dir
from ..layers import AdapterLayer, adapter_layers

ABLATION_ROWS = (
    "ID only",
    "style only",
    "ID + style, all blocks",
    "ID + style, upper",
    "ID + style, middle",
    "ID + style, lower",
)


@dataclass(frozen=True)
class Placement:
    """Where an adapter acts: on every layer it was trained on (blocks=None) or only inside `blocks`."""

    name: str
    blocks: tuple[str, ...] | None = None
    weight: float = 1.0


def load_named_adapter(unet: nn.Module, directory: str | Path, name: str) -> list[str]:
    """Add the adapter saved in `directory` to a diffusers U-Net as `name`; returns the layers holding it.

    The base-weight fingerprints are checked while the weights load, so an adapter trained on another U-Net fails.
    """
    directory = Path(directory)
    _, state = verify_adapter_dir(directory)  # checksum, symlinks, an interrupted swap: one read of the weights
    config = read_config(directory)
    with warnings.catch_warnings():  # several adapters on one model is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        unet.add_adapter(config, adapter_name=name)
    result = set_peft_model_state_dict(unet, state, adapter_name=name)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{directory}: tensors {result.unexpected_keys[:3]} do not fit this U-Net")
    layers = adapter_layers(unet, name)
    for layer in layers.values():
        layer.pi_adapters[name].requires_grad_(False)
    return sorted(layers)


def layers_in_blocks(unet: nn.Module, names: Iterable[str], blocks: Sequence[str]) -> set[str]:
    """Which of the layer `names` lie in `blocks` (block names or groups of the shared block-selection layer)."""
    targets = select_blocks(unet, target_modules=list(names), blocks=list(blocks), family="sd-unet")
    return {t.name for t in targets}


def apply_placements(unet: nn.Module, placements: Sequence[Placement]) -> None:
    """Activate exactly these adapters, each on its blocks and with its weight (the layer's output multiplier)."""
    wanted: dict[str, set[str]] = {}
    for layer in (m for m in unet.modules() if isinstance(m, AdapterLayer)):
        if layer.merged:
            layer.unmerge()
    for placement in placements:
        layers = adapter_layers(unet, placement.name)
        if not layers:
            raise ValueError(f"no adapter named {placement.name!r} is loaded")
        chosen = set(layers) if placement.blocks is None else layers_in_blocks(unet, layers, placement.blocks)
        for layer_name, layer in layers.items():
            layer.set_adapter_weight(placement.name, placement.weight)
            if layer_name in chosen:
                wanted.setdefault(layer_name, set()).add(placement.name)
    for layer_name, layer in ((n, m) for n, m in unet.named_modules() if isinstance(m, AdapterLayer)):
        active = sorted(wanted.get(layer_name, ()))
        layer.set_adapter(active, inference_mode=True)


def merge_placements(unet: nn.Module) -> None:
    """Fold the currently active adapters into the U-Net weights (undone by the next `apply_placements`)."""
    for layer in (m for m in unet.modules() if isinstance(m, AdapterLayer)):
        if layer.active_adapters:
            layer.merge()


def ablation(identity: str, style: str, weights: Mapping[str, float] | None = None) -> list[list[Placement]]:
    """The six placements of the Block-wise LoRA ablation, in `ABLATION_ROWS` order."""
    w = {identity: 1.0, style: 1.0, **(weights or {})}
    id_all = Placement(identity, None, w[identity])
    return [
        [id_all],
        [Placement(style, None, w[style])],
        [id_all, Placement(style, None, w[style])],
        *([id_all, Placement(style, (group,), w[style])] for group in ("upper", "middle", "lower")),
    ]
