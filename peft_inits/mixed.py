"""Mixed-adapter batches: sample b of a forward goes through adapter `adapter_names[b]`, PEFT's semantics exactly.

`PeftModel.forward/generate(..., adapter_names=[...])` arrive here through the tuner; for a model adapted without a
PeftModel (diffusers' `unet.add_adapter`) `mixed_batch(unet, names)` does the same around any call. Each adapter layer
then serves the batch in `AdapterLayer.mixed_forward`: SVFit/LoLDU adapters of one base share their frozen factors,
so N of them cost one down- and one up-projection plus a gathered gain per sample; other methods run per adapter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from .layers import AdapterLayer

BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


@contextlib.contextmanager
def mixed_batch(model: nn.Module, adapter_names: Sequence[str], *, num_beams: int | None = None) -> Iterator[None]:
    """Inside the block every adapter layer of `model` (and PEFT's `modules_to_save` copies) routes sample b through
    `adapter_names[b]` ("__base__": none). Refused in training mode and for names no layer holds, as PEFT does.

    With beam search (`num_beams` > 1) each name is repeated per beam, except in an encoder-decoder's encoder, which
    sees the original samples.
    """
    if isinstance(adapter_names, str) or not all(isinstance(name, str) for name in adapter_names):
        raise TypeError(f"adapter_names must be a list of adapter names, one per sample, got {adapter_names!r}")
    if model.training:
        raise ValueError("adapter_names is for inference: call model.eval() first (PEFT refuses it in training too)")
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    known = {name for layer in layers for name in layer.pi_adapters}
    unknown = sorted(set(adapter_names) - known - {BASE})
    if unknown:
        raise ValueError(
            f"adapter_names names adapters the model does not hold: {', '.join(map(repr, unknown))}; it holds "
            f"{', '.join(map(repr, sorted(known)))} (and {BASE!r} for no adapter)"
        )
    names = list(adapter_names)
    routed = [m for m in model.modules() if isinstance(m, (AdapterLayer, AuxiliaryTrainingWrapper))]
    plan = [(routed, names)]
    if num_beams is not None and num_beams > 1:
        plan = [(routed, [name for name in names for _ in range(num_beams)])]
        encoder = model.get_encoder() if callable(getattr(model, "get_encoder", None)) else None
        if encoder is not None:  # registered second, so the encoder's layers see the original names
            routed_ids = {id(m) for m in routed}
            plan.append(([m for m in encoder.modules() if id(m) in routed_ids], names))
    handles = [
        module.register_forward_pre_hook(_names_hook(per_sample), with_kwargs=True)
        for modules, per_sample in plan
        for module in modules
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _names_hook(adapter_names: list[str]):
    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        return args, {**kwargs, "adapter_names": adapter_names}

    return hook
