"""Transactional loading: a whole adapter file is checked before any tensor is copied, and a refused load (or a failed
injection) takes the half-added adapter out again, so the model is left exactly as it was.

The checks: every tensor the model's adapter layers expect is present (missing keys are errors, not PEFT's warning),
none is left over (a tensor for a module the config does not adapt), dtypes are of the right kind (an integer tensor
where a float belongs is a damaged header), float values are finite, and each method's own `verify` (base-weight
fingerprint, rank, recomputed references) passes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from .adapters import Commit
from .checkpoint import non_finite
from .layers import AdapterLayer, adapter_layers

_ADAPTER_KEY = re.compile(r"(?P<layer>.+)\.pi_adapters\.(?P<adapter>[^.]+)\.(?P<tensor>.+)")


def adapter_names_in(state_dict: Mapping[str, Tensor], prefix: str = "") -> set[str]:
    """Names of the adapters whose tensors `state_dict` holds (keys `prefix` + module path)."""
    names = set()
    for key in state_dict:
        match = _ADAPTER_KEY.fullmatch(key[len(prefix) :]) if key.startswith(prefix) else None
        if match:
            names.add(match["adapter"])
    return names


def remove_adapter(model: nn.Module, adapter_name: str) -> None:
    """Take `adapter_name` out of every layer; a layer left without adapters is replaced by its base layer again."""
    for name, layer in adapter_layers(model, adapter_name).items():
        if layer.merged:
            layer.unmerge()
        del layer.pi_adapters[adapter_name]
        layer.adapter_weights.pop(adapter_name, None)
        if len(layer.pi_adapters) == 0:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer.get_base_layer())
        else:
            remaining = [a for a in layer.active_adapters if a != adapter_name] or [next(iter(layer.pi_adapters))]
            layer.set_adapter(remaining)


def check_adapter_state(model: nn.Module, state_dict: Mapping[str, Tensor], prefix: str = "") -> list[Commit]:
    """Validate every adapter tensor of `state_dict` (keys `prefix` + module path in `model`) before anything loads.

    Adapters that appear in the state dict must be complete in it. Returns the commits of the methods' checks.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}
    found: dict[tuple[str, str], dict[str, Tensor]] = {}
    stray: list[str] = []
    for key, value in state_dict.items():
        if not key.startswith(prefix) or ".pi_adapters." not in key:
            continue
        match = _ADAPTER_KEY.fullmatch(key[len(prefix) :])
        if match and match["adapter"] in getattr(layers.get(match["layer"]), "pi_adapters", {}):
            found.setdefault((match["layer"], match["adapter"]), {})[match["tensor"]] = value
        else:
            stray.append(key[len(prefix) :].split(".pi_adapters.")[0])
    if not found and not stray:
        return []
    loading = {adapter for _, adapter in found}
    stray = sorted(set(stray))
    if stray:
        shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        raise ValueError(
            f"the adapter file holds tensors for modules this model's config does not adapt: {shown}; its "
            "target_modules / blocks and the file disagree"
        )
    commits: list[Commit] = []
    verified = []
    for name, layer in layers.items():
        for adapter_name in loading & set(layer.pi_adapters):
            where = f"{name} ({adapter_name})"
            saved = found.get((name, adapter_name), {})
            weights = layer.pi_adapters[adapter_name]
            if weights.pending:  # built on the meta device: `materialize` verifies what lands in it
                continue
            expected = weights.state_dict()
            missing = sorted(set(expected) - set(saved))
            if missing:
                raise ValueError(f"{where}: the adapter file lacks {missing}; it is incomplete or damaged")
            extra = sorted(set(saved) - set(expected))
            if extra:
                raise ValueError(f"{where}: the adapter file has unexpected tensors {extra} for this method")
            for tensor_name, value in saved.items():
                _check_tensor(f"{where}: {tensor_name}", value, expected[tensor_name])
            commit = weights.verify(saved, where, layer.get_base_layer().weight)
            verified.append(weights)
            for tensor_name, value in saved.items():
                if value.shape != expected[tensor_name].shape:
                    raise ValueError(
                        f"{where}: {tensor_name} has shape {tuple(value.shape)} in the file but "
                        f"{tuple(expected[tensor_name].shape)} in the model; build the model with the file's config"
                    )
            if commit is not None:
                commits.append(commit)
    for weights in verified:  # their own _load_from_state_dict need not check again
        weights.__dict__["_preverified"] = True
    return commits


def _check_tensor(where: str, value: Tensor, own: Tensor) -> None:
    if own.is_floating_point() != value.is_floating_point() or (
        not own.is_floating_point() and own.dtype != value.dtype
    ):
        raise ValueError(f"{where} is stored as {value.dtype} but must be {own.dtype}: the file is damaged")
    if value.device.type != "meta" and (bad := non_finite({where: value})):
        raise ValueError(f"{where} holds {bad[where]} non-finite values (inf/NaN); refusing to load it")
