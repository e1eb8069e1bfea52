"""Turn a base classifier plus `AdapterSettings` into a model ready to train, with its parameter groups.

Methods: every registered adapter method (our PEFT configs; the classification head trains through PEFT's
`modules_to_save`, so the saved adapter is a complete classifier), `full` (every weight) and `head` (frozen body).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from peft import get_peft_model
from torch import nn

from ..blocks import Target
from ..checkpoint import save_adapter, save_tensors
from ..config import AdapterConfig
from ..registry import get_method
from .settings import AdapterSettings, is_adapter_method

_HEAD_NAMES = ("classifier", "score", "head", "fc")


@dataclass
class Prepared:
    """A model ready to train: which parameters are the adapter (or body) and which the head."""

    model: nn.Module
    settings: AdapterSettings
    adapter_params: list[nn.Parameter]
    head_params: list[nn.Parameter]
    head_modules: list[str]
    config: AdapterConfig | None = None
    targets: list[Target] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.settings.method

    def counts(self) -> dict[str, int]:
        adapter = sum(p.numel() for p in self.adapter_params)
        head = sum(p.numel() for p in self.head_params)
        # PEFT's modules_to_save keeps a frozen original of the head next to the trained copy: count it once.
        total = sum(p.numel() for name, p in self.model.named_parameters() if ".original_module." not in name)
        return {
            "adapter_params": adapter,
            "head_params": head,
            "trainable_params": adapter + head,
            "total_params": total,
        }


def head_module_names(model: nn.Module, requested: list[str] | None = None) -> list[str]:
    """Names of the classification head modules: `requested` ([] = none), else the first of classifier/score/head/fc."""
    children = dict(model.named_children())
    modules = dict(model.named_modules())
    if requested is not None:  # [] = no head (e.g. a diffusion U-Net)
        missing = [name for name in requested if name not in modules]
        if missing:
            raise ValueError(f"head module(s) {missing} not found; top-level modules: {sorted(children)}")
        return list(requested)
    for name in _HEAD_NAMES:
        if isinstance(children.get(name), nn.Module):
            return [name]
    raise ValueError(
        f"cannot find the classification head among the top-level modules {sorted(children)}; pass --head-modules"
    )


def _peft_config(settings: AdapterSettings, model: nn.Module, head: list[str]) -> tuple[AdapterConfig, list[Target]]:
    """Build the PEFT config, resolving r='full' to the largest rank every targeted matrix allows."""
    method = get_method(settings.method)
    options: dict = {
        "alpha": settings.alpha,
        "target_modules": settings.target_modules,
        "module_kinds": settings.module_kinds,
        "blocks": settings.blocks,
        "exclude_modules": settings.exclude_modules,
        "modules_to_save": head or None,
        "seed": settings.init_seed,
        "decompose_dtype": settings.decompose_dtype,
        "embed_factors": settings.embed_factors,
        **settings.options,
    }
    rank = settings.rank
    if rank == "full":
        modules = dict(model.named_modules())
        shapes = [_matrix_shape(modules[t.name]) for t in method.config(r=1, **options).resolve(model)]
        rank = min(min(m, n) for m, n in shapes)
    config = method.config(r=rank, **options)
    return config, config.resolve(model)  # resolve checks every target's rank against its matrix


def _matrix_shape(module: nn.Module) -> tuple[int, int]:
    weight = module.get_base_layer().weight if hasattr(module, "get_base_layer") else module.weight
    return weight.shape[0], weight[0].numel()


def prepare(model: nn.Module, settings: AdapterSettings) -> Prepared:
    """Freeze/wrap `model` for `settings.method` and split its trainable parameters into adapter and head groups."""
    head = head_module_names(model, settings.head_modules)
    if is_adapter_method(settings.method):
        config, targets = _peft_config(settings, model, head)
        with warnings.catch_warnings():  # transformers 5 deprecation noise from inside PEFT
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            wrapped = get_peft_model(model, config)
        adapter, head_params = [], []
        for name, param in wrapped.named_parameters():
            if param.requires_grad:
                (head_params if ".modules_to_save." in name else adapter).append(param)
        return Prepared(wrapped, settings, adapter, head_params, head, config, targets)
    head_ids = {id(p) for name in head for p in model.get_submodule(name).parameters()}
    for param in model.parameters():
        param.requires_grad_(settings.method == "full" or id(param) in head_ids)
    trainable = [p for p in model.parameters() if p.requires_grad]
    body = [p for p in trainable if id(p) not in head_ids]
    head_params = [p for p in trainable if id(p) in head_ids]
    return Prepared(model, settings, body, head_params, head)


def trainable_state(prepared: Prepared) -> dict[str, object]:
    """The tensors a training checkpoint must hold to restore the model: the whole state of every module that owns a
    trainable parameter (so SVFit/LoLDU keep the fingerprint their loader checks); everything, for full."""
    model = prepared.model
    if prepared.method == "full":
        return _unique_tensors(model.state_dict())
    owners = {name.rpartition(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    return {name: t for name, t in model.state_dict().items() if name.rpartition(".")[0] in owners}


def _unique_tensors(state: dict) -> dict:
    """Drop tied duplicates (safetensors refuses shared storage)."""
    seen: set[int] = set()
    unique = {}
    for name, tensor in state.items():
        key = tensor.data_ptr()
        if key in seen and tensor.numel():
            continue
        seen.add(key)
        unique[name] = tensor
    return unique


def save_weights(prepared: Prepared, directory: Path) -> Path:
    """Save what a user needs to reuse the run and return the weights file (its size goes in the table).

    Adapters: the PEFT layout (`adapter_config.json` + `adapter_model.safetensors`, head included); full: the whole
    model's state dict; head: the head's tensors.
    """
    if prepared.config is not None:
        save_adapter(prepared.model, directory)  # type: ignore[arg-type]
        return directory / "adapter_model.safetensors"
    if prepared.method == "full":
        path = directory / "model.safetensors"
        save_tensors(_unique_tensors(prepared.model.state_dict()), path)
        return path
    path = directory / "head.safetensors"
    tensors = {
        f"{name}.{key}": value
        for name in prepared.head_modules
        for key, value in prepared.model.get_submodule(name).state_dict().items()
    }
    save_tensors(tensors, path)
    return path
