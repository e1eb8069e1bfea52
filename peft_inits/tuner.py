"""The injector: a `peft` BaseTuner that places `AdapterLayer`s where the block-selection layer says.

Injection and loading are transactional (`peft_inits.loading`): a failed injection removes what it added, and a
state dict is checked as a whole before any tensor of it is copied; when it is refused, an adapter that has never
held loaded weights (e.g. the one `PeftModel.from_pretrained` just injected) is removed again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .blocks import Target
from .config import AdapterConfig
from .layers import AdapterLayer, adapter_layers, check_supported
from .loading import adapter_names_in, check_adapter_state, remove_adapter
from .mixed import mixed_batch


class AdapterModel(BaseTuner):
    """One tuner for every registered method: the method of each module comes from the resolved block plan."""

    prefix: str = "pi_"
    tuner_layer_cls = AdapterLayer
    target_module_mapping: ClassVar[dict[str, list[str]]] = {}

    def _prepare_adapter_config(self, peft_config: AdapterConfig, model_config: dict) -> AdapterConfig:
        return peft_config  # targets are resolved against the model in `_prepare_model`

    def _prepare_model(self, peft_config: AdapterConfig, model: nn.Module) -> None:
        targets = peft_config.resolve(model)
        modules = dict(model.named_modules())
        for target in targets:
            module = modules[target.name]
            check_supported(module.get_base_layer() if isinstance(module, AdapterLayer) else module, target.name)
        self._plans()[id(peft_config)] = {target.name: target for target in targets}

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        try:
            super().inject_adapter(model, adapter_name, *args, **kwargs)
        except BaseException:
            remove_adapter(model, adapter_name)
            self.peft_config.pop(adapter_name, None)
            raise
        self._state()["fresh"].add(adapter_name)
        if not self._state()["hooked"]:
            self.register_load_state_dict_pre_hook(_check_before_loading)
            self._state()["hooked"] = True

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """PeftModel.forward/generate enter this with their kwargs: `adapter_names` makes the call a mixed batch."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        num_beams = kwargs.get("num_beams")
        with mixed_batch(self.model, adapter_names, num_beams=num_beams if isinstance(num_beams, int) else None):
            yield

    def refuse_load(self, adapter_names: set[str]) -> None:
        """Undo the adapters among `adapter_names` that never held loaded weights (the load that failed added them)."""
        for name in adapter_names & self._state()["fresh"]:
            remove_adapter(self.model, name)
            self.peft_config.pop(name, None)
            self._state()["fresh"].discard(name)
        if not self.peft_config and "peft_config" in self.model.__dict__:
            del self.model.peft_config

    def _state(self) -> dict:
        """Bookkeeping kept on the tuner (BaseTuner injects before our __init__ body could set attributes)."""
        if "_pi_state" not in self.__dict__:
            self.__dict__["_pi_state"] = {"plans": {}, "fresh": set(), "hooked": False}
        return self.__dict__["_pi_state"]

    def _plans(self) -> dict[int, dict[str, Target]]:
        """Resolved plans by config object."""
        return self._state()["plans"]

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """PEFT's dtype contract: `autocast_adapter_dtype=True` (the default) keeps adapters in float32 — ours are
        built that way — and False puts the whole adapter (trained tensors and frozen factors; the integer
        fingerprint stays) in its base layer's dtype, e.g. fp16 to save memory."""
        if autocast_adapter_dtype:
            return
        for module in adapter_layers(self.model, adapter_name).values():
            module.cast_adapter(adapter_name, module.get_base_layer().weight.dtype)

    def _check_target_module_exists(self, peft_config: AdapterConfig, key: str) -> bool:
        return key in self._plans().get(id(peft_config), {})

    def _create_and_replace(
        self,
        peft_config: AdapterConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        spec = peft_config.spec_for(self._plans()[id(peft_config)][current_key])
        if isinstance(target, AdapterLayer):
            target.update_layer(adapter_name, spec)
            return
        new_module = AdapterLayer(target, adapter_name, spec)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)


def _check_before_loading(tuner: AdapterModel, state_dict, prefix, *args, **kwargs) -> None:
    """load_state_dict pre-hook of the tuner: the whole file is validated before any child module copies a tensor."""
    inner = prefix + "model."
    loading = adapter_names_in(state_dict, inner)
    try:
        commits = check_adapter_state(tuner.model, state_dict, inner)
    except ValueError:
        tuner.refuse_load(loading)
        raise
    for commit in commits:
        commit()
    tuner._state()["fresh"] -= loading
